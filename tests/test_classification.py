"""REMEDI as a probe: metrics, labels, scores, the control task, mediation, and the scripts.

The LM is a tiny random GPT-2 and the data a small generated toy world, so these check the
definitions and the pipeline, not the scores (the toy-world numbers are in the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from remedi import data, errors, io, metrics, models, training
from remedi.evaluation.probing import classification as cls
from remedi.evaluation.probing import mediation, probe_runs
from remedi.report import tables
from remedi.toy import export
from remedi.toy.world import generate_world
from scripts import eval_fact_cls, eval_fact_mediation
from tests.conftest import one_epoch_run, save_tiny_gpt2, train_runs
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

# ---------------------------------------------------------------------------------------------
# Metrics, against counts worked by hand.


def test_f1_and_mcc_match_hand_computed_values():
    truth = [True, True, True, False, False, False, False, True]
    predicted = [True, True, False, False, True, False, False, False]
    # tp 2, fn 2, fp 1, tn 3
    assert metrics.f1_score(truth, predicted) == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    expected_mcc = (2 * 3 - 1 * 2) / np.sqrt((2 + 1) * (2 + 2) * (3 + 1) * (3 + 2))
    assert metrics.matthews_corrcoef(truth, predicted) == pytest.approx(expected_mcc)
    assert metrics.accuracy(truth, predicted) == pytest.approx(5 / 8)


def test_degenerate_predictions_score_zero_as_sklearn_does():
    assert metrics.matthews_corrcoef([True, False, True], [True, True, True]) == 0.0
    assert metrics.f1_score([False, False], [False, False]) == 0.0
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        metrics.f1_score([True, False], [True, False, True])


def test_constant_positive_f1_is_the_f1_of_calling_every_sample_positive():
    for positives in (0, 1, 7, 10):
        truth = [True] * positives + [False] * (10 - positives)
        assert metrics.constant_positive_f1(positives / 10) == pytest.approx(
            metrics.f1_score(truth, [True] * 10)
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.constant_positive_f1(1.5)


def _outputs(labels: list[bool], predictions: list[bool]) -> list[cls.ClassifierOutputs]:
    return [
        cls.ClassifierOutputs(
            logp_target=0.0 if label else -1.0,
            logp_comparator=-0.5,
            score_target=1.0 if prediction else -1.0,
            score_comparator=0.0,
        )
        for label, prediction in zip(labels, predictions, strict=True)
    ]


def test_f1_is_of_the_lm_failing_in_both_tasks_and_mcc_is_unchanged_by_the_flip():
    # labels T T T F F, predictions T T F F T: the positive class is the LM failing (F), as the
    # reference flips both tasks before F1.
    outputs = _outputs([True, True, True, False, False], [True, True, False, False, True])
    result = cls.task_metrics(outputs)
    assert result.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # flipped: tp 1, fp 1, fn 1
    unflipped_mcc = metrics.matthews_corrcoef(
        [True, True, True, False, False], [True, True, False, False, True]
    )
    assert result.mcc == pytest.approx(unflipped_mcc)
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.label_rate == pytest.approx(0.6)


def test_control_task_shuffles_labels_with_its_seed_and_keeps_their_balance():
    labels = [True] * 30 + [False] * 70
    shuffled = cls.control_labels(labels, seed=3)
    assert sorted(shuffled) == sorted(labels)
    assert shuffled == cls.control_labels(labels, seed=3)
    assert shuffled != cls.control_labels(labels, seed=4)
    assert shuffled != labels
    outputs = _outputs(labels, labels)  # a perfect probe
    assert cls.task_metrics(outputs).mcc == pytest.approx(1.0)
    control = cls.task_metrics(outputs, control_task=True, control_task_seed=3)
    assert abs(control.mcc) < 0.5


def test_standardize_leaves_constant_dimensions_centred_not_nan():
    values = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    result = cls.standardize(values)
    assert torch.isfinite(result).all()
    assert torch.allclose(result[:, 1], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(result[:, 0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# The benchmark on a tiny real model.


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Toy-world data, a tiny model on disk, and two runs: trained and random-init editors."""
    root = tmp_path_factory.mktemp("probe")
    data_dir = root / "data"
    world = generate_world(seed=0, num_entities=12)
    io.write_json(data_dir / "counterfact.json", export.counterfact_records(world, seed=0))
    model_dir = save_tiny_gpt2(tokenizer, root / "tiny-model")
    results_dir = root / "results"
    file = data_dir / "counterfact.json"
    train_runs(
        results_dir,
        *(
            one_epoch_run(name, model_dir, file, random_init=random_init)
            for name, random_init in (("editors", False), ("editors_random", True))
        ),
    )
    return {"data": data_dir, "model": model_dir, "results": results_dir}


@pytest.fixture()
def samples(setup) -> list[dict]:
    dataset = data.load_dataset("counterfact", file=setup["data"] / "counterfact.json")
    return [dict(row) for row in dataset.select(range(12))]


def test_labels_are_the_lms_first_token_preferences_in_and_out_of_context(setup, samples):
    mt = models.load_model(str(setup["model"]), device="cpu")
    mt.model.double()
    editor = training.load_run_editor(setup["results"] / "editors", 0, mt=mt)
    result = cls.classification(mt, editor, samples, entity_layer=1)
    for row, sample in zip(samples[:3], result.samples[:3], strict=True):
        for text, target, comparator, outputs in (
            (row["prompt"], row["target_unmediated"], row["target_mediated"], sample.decontextual),
            (
                row["context"].rstrip(". ") + ". " + row["prompt"],
                row["target_mediated"],
                row["target_unmediated"],
                sample.contextual,
            ),
        ):
            ids = mt.tokenizer(text, return_tensors="pt").input_ids
            with torch.no_grad():
                logps = torch.log_softmax(mt.model(ids).logits[0, -1].double(), -1)
            target_id = mt.tokenizer(" " + target).input_ids[0]
            comparator_id = mt.tokenizer(" " + comparator).input_ids[0]
            # Batched (padded) and single passes agree to rounding.
            precision = precision_of(mt)
            assert_equal_in_exact_arithmetic(outputs.logp_target, logps[target_id], precision)
            assert_equal_in_exact_arithmetic(
                outputs.logp_comparator, logps[comparator_id], precision
            )
    assert result.settings.entity_layer == 1 and result.settings.editor_layer == 0
    assert result.metrics.contextual.label_rate == pytest.approx(
        np.mean([s.contextual.label for s in result.samples])
    )


def test_identity_scores_are_standardised_dot_products_of_attribute_and_entity(setup, samples):
    mt = models.load_model(str(setup["model"]), device="cpu")
    mt.model.double()
    editor = training.load_run_editor(setup["results"] / "editors", 0, mt=mt)
    identity = cls.identity_editor(mt, editor)
    result = cls.classification(mt, identity, samples, entity_layer=0, normalize=False)
    # Independent computation: the attribute's mean state in the context (layer 0 output) and the
    # entity's last-token state in the prompt, dotted.
    row = samples[0]
    states = {}
    for key, text in (("context", row["context"]), ("prompt", row["prompt"])):
        encoded = mt.tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")[0]
        with torch.no_grad():
            hidden = mt.model(**encoded, output_hidden_states=True).hidden_states[1][0]
        states[key] = (hidden, offsets)
    hidden, offsets = states["context"]
    start = row["context"].rfind(row["attribute"])
    end = start + len(row["attribute"])
    in_attribute = [(s < end and e > start and e > s) for s, e in offsets.tolist()]
    attribute = hidden[torch.tensor(in_attribute)].mean(dim=0)
    hidden, offsets = states["prompt"]
    start = row["prompt"].rfind(row["entity"])
    end = start + len(row["entity"])
    last = max(i for i, (s, e) in enumerate(offsets.tolist()) if s < end and e > start and e > s)
    entity = hidden[last]
    expected = float((attribute.double() * entity.double()).sum())
    # The benchmark stores hidden states as float32 (precompute): agreement to float32 rounding.
    assert result.samples[0].decontextual.score_comparator == pytest.approx(expected, rel=1e-5)


def test_samples_without_both_targets_are_refused_by_name(setup, samples):
    mt = models.load_model(str(setup["model"]), device="cpu")
    editor = training.load_run_editor(setup["results"] / "editors", 0, mt=mt)
    broken = [dict(samples[0], target_unmediated=None), *samples[1:]]
    with pytest.raises(errors.SampleError, match=str(samples[0]["id"])):
        cls.classification(mt, editor, broken)


def test_mediation_accuracy_is_the_share_preferring_the_target(setup, samples):
    mt = models.load_model(str(setup["model"]), device="cpu")
    results = mediation.mediation(mt, samples, batch_size=5)
    for task in ("contextual", "decontextual"):
        task_results = getattr(results, task)
        expected = np.mean([s.logp_target > s.logp_comparator for s in task_results.samples])
        assert task_results.accuracy == pytest.approx(expected)
        assert len(task_results.samples) == len(samples)
        assert all(len(s.predictions) == mediation.DEFAULT_TOP_K for s in task_results.samples)


def test_tables_write_markdown_latex_json_and_a_plot(tmp_path):
    table = tables.Table(
        "t", {"a": "A_1", "b": "B"}, [tables.TableRow("x", {"a": 0.5, "b": None})], ["a note"]
    )
    files = tables.write_table(table, tmp_path, "summary")
    assert "| x | 0.50 | n/a |" in files.markdown.read_text()
    assert r"A\_1" in files.latex.read_text()
    assert tables.Table.from_dict(json.loads(files.json.read_text())) == table
    assert files.plot.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# The scripts.


def probe_argv(setup: dict[str, Path], name: str) -> list[str]:
    """A probing script's arguments: the trained and random-init runs, entity layers 1 and 0."""
    return [
        *("-n", name, "-e", str(setup["results"] / "editors")),
        *("--control-editors-dir", str(setup["results"] / "editors_random")),
        *("-m", str(setup["model"]), "--entity-layers", "1", "0", "--device", "cpu"),
    ]


def assert_every_row_written(
    result_module: Any, experiment: Path, out: str, control_layer: int
) -> Any:
    """The printed table has every row, each row a result at entity layers 0 and 1 read at its
    layer; returns the control model's result (at ``control_layer``), read on a random model."""
    for label in cls.ROWS.values():
        assert f"| {label} |" in out
    for row in cls.ROWS:
        for layer in (0, 1):
            result = result_module.read_result(result_module.result_file(experiment, row, layer))
            assert result is not None and result.settings.entity_layer == layer
    control = result_module.read_result(
        result_module.result_file(experiment, "control_model", control_layer)
    )
    assert control is not None and control.settings.random_init
    return control


def test_cls_script_writes_every_row_and_reuses_finished_results(setup, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = probe_argv(setup, "cls")
    assert eval_fact_cls.main(argv) == 0
    experiment = setup["results"] / "cls"
    control = assert_every_row_written(cls, experiment, capsys.readouterr().out, control_layer=1)
    assert cls.read_result(cls.result_file(experiment, "control_task", 1)).settings.control_task
    for suffix in ("md", "tex", "json", "png"):
        assert (experiment / f"summary.{suffix}").is_file()
        assert (experiment / f"summary_entity_layer_0.{suffix}").is_file()
    # Each row states the F1 that needs no signal at its own LM's failure rates.
    failure_rate = 1 - control.metrics.decontextual.label_rate
    no_signal = f"Fact-Prior {metrics.constant_positive_f1(failure_rate):.2f}"
    control_note = next(
        line
        for line in (experiment / "summary_entity_layer_1.md").read_text().splitlines()
        if line.startswith("- Control Model:")
    )
    assert "F1 of calling every sample a failure" in control_note and no_signal in control_note
    mtimes = {p: p.stat().st_mtime_ns for p in experiment.rglob("cls_*.json")}
    assert eval_fact_cls.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("cls_*.json")} == mtimes


def test_cls_script_takes_the_reference_rows_and_refuses_to_mix_samples(setup, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    # The toy file is far shorter than 10,000 cases: the reference's rows, scaled down.
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(3, 9))
    argv = ["-n", "cls_reference", "-e", str(setup["results"] / "editors")]
    argv += ["-m", str(setup["model"]), "--device", "cpu"]
    assert eval_fact_cls.main([*argv, "--split", "reference"]) == 0
    assert "Samples: the reference's evaluation split (case ids 3-8" in capsys.readouterr().out
    experiment = setup["results"] / "cls_reference"
    result = cls.read_result(cls.result_file(experiment, "remedi", 0))
    assert result is not None
    assert [sample.id for sample in result.samples] == [f"counterfact/{i}" for i in range(3, 9)]
    with pytest.raises(errors.MismatchError, match="holds a result on other samples"):
        eval_fact_cls.main(argv)  # the test split, into the same experiment
    with pytest.raises(errors.UsageError, match="goes with --split reference"):
        eval_fact_cls.main([*argv, "--small"])


def test_cls_script_refuses_a_random_run_as_the_trained_editors(setup, monkeypatch):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-n", "x", "-e", str(setup["results"] / "editors_random"), "-m", str(setup["model"])]
    with pytest.raises(errors.UsageError, match="--control-editors-dir"):
        eval_fact_cls.main([*argv, "--device", "cpu"])


def test_probe_run_checks_name_the_run_the_flag_and_the_fix(setup):
    trained, random = setup["results"] / "editors", setup["results"] / "editors_random"
    assert probe_runs.check_run(trained, False, "-e").args.dataset == "counterfact"
    with pytest.raises(errors.MismatchError, match=r"-e .*'counterfact'.*x\.train\.biosbias"):
        probe_runs.check_run(
            trained, False, "-e", dataset="biosbias", train_task="invoke x.train.biosbias"
        )
    with pytest.raises(errors.UsageError, match=r"--control-editors-dir.*--random"):
        probe_runs.check_run(trained, True, "--control-editors-dir")
    assert probe_runs.check_run(random, True, "--control-editors-dir").args.random_init
    with pytest.raises(errors.UsageError, match="pass -l LAYER"):
        probe_runs.editor_layer(trained, "no-such-type", None)
    assert probe_runs.editor_layer(trained, "linear", 3) == 3


def test_mediation_script_writes_results_and_a_table(setup, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-n", "med", "-m", str(setup["model"]), "--device", "cpu", "--max-samples", "10"]
    argv += ["--dataset-file", str(setup["data"] / "counterfact.json")]
    assert eval_fact_mediation.main(argv) == 0
    shown = capsys.readouterr().out
    assert "| Contextual | Decontextual |" in shown
    assert "Samples: every sample of the file." in shown
    saved = mediation.MediationResults.from_dict(
        io.read_json(setup["results"] / "med" / "mediation.json")
    )
    assert len(saved.contextual.samples) == 10

    # Other samples never reuse the stored result: they are refused, or --rerun replaces it.
    with pytest.raises(errors.MismatchError, match=r"10 other samples than the 5 .*--rerun"):
        eval_fact_mediation.main([*argv, "--max-samples", "5"])
    # The reference's case ids 5000-9999 are not in the sample file: said, not evaluated.
    with pytest.raises(errors.UsageError, match="is empty for this counterfact file"):
        eval_fact_mediation.main([*argv, "--split", "reference", "--rerun"])
    with pytest.raises(SystemExit) as refused:
        eval_fact_mediation.main([*argv, "--small"])
    assert refused.value.code == 2
    assert "goes with --split reference" in capsys.readouterr().err


def test_probing_tasks_are_listed_and_say_what_to_train_first(tmp_path):
    from tests.test_tasks import assert_listed, run_invoke

    assert_listed(
        "x.eval.cls.counterfact",
        "x.eval.med.counterfact",
        "x.train.mcrae",
        "x.eval.ent.mcrae",
        "x.sweep.gen.counterfact",
        "x.sweep.cls.counterfact",
        "x.sweep.ent.mcrae",
        "x.eval.cls.biosbias",
        "x.sweep.gen.biosbias",
        "x.sweep.cls.biosbias",
        "x.train.counterfact",
        "x.train.biosbias",
        "x.eval.gen.counterfact",
        "x.eval.gen.biosbias",
    )
    result = run_invoke(
        "x.eval.cls.counterfact", "--model", "gpt2", env={"REMEDI_RESULTS_DIR": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "invoke x.train.counterfact --model gpt2" in result.stderr


def test_cls_sweep_plots_every_metric_and_picks_the_best_fact_med_f1(setup, monkeypatch):
    from remedi import sweep

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-n", "sweep_cls", "-e", str(setup["results"] / "editors"), "-m", str(setup["model"])]
    assert eval_fact_cls.main([*argv, "--entity-layers", "0", "1", "--device", "cpu"]) == 0
    experiment = setup["results"] / "sweep_cls"
    result, files = sweep.write_sweep("cls", experiment, [0, 1])
    f1 = {
        layer: cls.read_result(cls.result_file(experiment, "remedi", layer)).metrics.contextual.f1
        for layer in (0, 1)
    }
    assert result.best_layer == max(f1, key=lambda layer: (f1[layer], -layer))
    assert [point.layer for point in result.points] == [0, 1]
    assert (experiment / "sweep_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert files.markdown.is_file()
    with pytest.raises(errors.MissingFileError, match="no results for any of layers"):
        sweep.write_sweep("cls", experiment, [5])


def test_best_layer_ignores_missing_and_nan_values():
    from remedi import sweep

    points = [
        sweep.SweepPoint(0, {"m": 0.2}),
        sweep.SweepPoint(1, {"m": float("nan")}),
        sweep.SweepPoint(2, {"m": 0.5}),
        sweep.SweepPoint(3, {}),
        sweep.SweepPoint(4, {"m": 0.5}),
    ]
    assert sweep.best_layer(points, "m") == 2  # ties go to the lower layer
    assert sweep.best_layer(points, "other") is None


def test_cls_script_random_probes_the_control_model_with_its_own_editors(setup, monkeypatch):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-n", "cls_random", "-e", str(setup["results"] / "editors_random")]
    argv += ["-m", str(setup["model"]), "--device", "cpu", "--random"]
    assert eval_fact_cls.main(argv) == 0
    result = cls.read_result(cls.result_file(setup["results"] / "cls_random", "remedi", 0))
    assert result is not None and result.settings.random_init
    with pytest.raises(errors.UsageError, match="needs editors trained on the random model"):
        eval_fact_cls.main(["-n", "y", "-e", str(setup["results"] / "editors"), *argv[4:]])


def test_gen_sweep_reads_remedis_row_of_each_layers_summary(tmp_path):
    from remedi import sweep
    from remedi.evaluation.editing import counterfact_report

    for layer, efficacy in ((0, 90.0), (1, 95.0)):
        summary = counterfact_report.Summary(
            title="t",
            rows=[
                counterfact_report.SummaryRow(
                    "prefix", "Prefix", 3, {"score": 99.0, "efficacy": 99.0}
                ),
                counterfact_report.SummaryRow(
                    "remedi",
                    "REMEDI",
                    3,
                    {"score": efficacy, "efficacy": efficacy, "fluency": None},
                ),
            ],
        )
        io.write_json(sweep.layer_dir(tmp_path, layer) / "summary.json", summary.to_dict())
    result, _ = sweep.write_sweep("gen", tmp_path, [0, 1, 2], criterion="rome_score")
    assert [point.layer for point in result.points] == [0, 1]
    assert result.points[0].metrics == {"score": 90.0, "efficacy": 90.0}
    assert result.best_layer == 1
    # The reference's criterion needs paraphrase, consistency or fluency: none was measured.
    result, _ = sweep.write_sweep("gen", tmp_path, [0, 1, 2])
    assert result.best_layer is None and result.terms == []
    assert "No layer chosen" in result.notes[-1]
