"""The evaluation script end to end on toy-world data: result files, rerun, crash safety.

The data are the toy world's exports (CounterFact, attribute snippets, TF-IDF tables, world.json)
of a small generated world; the LM is a tiny random GPT-2, so this checks the pipeline and its
files, not the scores (see test_eval_toy.py for a trained toy world).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from remedi import env, errors, evaluation, io, training
from remedi.evaluation import result_file
from remedi.evaluation.editing import counterfact_report
from remedi.methods import HPARAMS_DIR
from remedi.toy import export
from remedi.toy.world import generate_world
from scripts import eval_fact_gen, trace_counterfact
from tests.conftest import one_epoch_run, save_tiny_gpt2, train_runs

METHODS = ("remedi", "prefix", "replace", "unedited")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A toy data directory, a tiny model saved to disk, and a run with a trained editor."""
    root = tmp_path_factory.mktemp("eval_script")
    data_dir = root / "data" / "toy-tiny"
    world = generate_world(seed=0, num_entities=12)
    io.write_json(data_dir / "counterfact.json", export.counterfact_records(world, seed=0))
    io.write_json(data_dir / "world.json", world.to_json())
    io.write_json(data_dir / "attribute_snippets.json", export.attribute_snippets(world))
    idf, vocabulary = export.tfidf_statistics(
        [text for texts in world.biographies.values() for text in texts]
    )
    io.write_json(data_dir / "tfidf_vocab.json", vocabulary)
    np.save(data_dir / "idf.npy", idf)

    model_dir = save_tiny_gpt2(tokenizer, root / "tiny-model")
    results_dir = root / "results"
    file = data_dir / "counterfact.json"
    train_runs(results_dir, one_epoch_run("editors", model_dir, file, test_size=0.2))
    return {"data": data_dir, "model": model_dir, "results": results_dir}


@pytest.fixture()
def results_dir(setup, monkeypatch) -> Path:
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    return setup["results"]


def _argv(setup: dict[str, Path], name: str, *extra: str) -> list[str]:
    return [
        "-n",
        name,
        "-e",
        str(setup["results"] / "editors"),
        "-m",
        str(setup["model"]),
        "-l",
        "0",
        "--baselines",
        "prefix",
        "replace",
        "unedited",
        "--device",
        "cpu",
        "--max-cases",
        "3",
        "--max-length",
        "24",
        "--batch-size",
        "8",
        *extra,
    ]


def _mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*.json")}


def test_the_script_writes_one_result_per_benchmark_and_a_summary(setup, results_dir, capsys):
    assert eval_fact_gen.main(_argv(setup, "eval_full")) == 0
    out = capsys.readouterr().out
    experiment = results_dir / "eval_full"
    for method in METHODS:
        for name, result_type in evaluation.RESULT_TYPES.items():
            path = experiment / method / f"{name}.json"
            result = result_type.from_dict(json.loads(path.read_text()))
            assert result.settings.method == method
    # Only the training run's held-out cases are evaluated, by every method.
    test_ids = training.load_run(setup["results"] / "editors").split.test[:3]
    efficacy = evaluation.read_result(experiment / "remedi" / "efficacy.json", "efficacy")
    assert isinstance(efficacy, evaluation.ProbabilityResults)
    assert [f"counterfact/{i}" for i in efficacy.settings.case_ids] == test_ids
    relation = evaluation.read_result(
        experiment / "unedited" / "relation_specificity.json", "relation_specificity"
    )
    assert isinstance(relation, evaluation.RelationSpecificityResults) and relation.available
    markdown = (experiment / "summary.md").read_text()
    latex = (experiment / "summary.tex").read_text()
    headers = ["Method", "N", *(column.header for column in counterfact_report.COLUMNS)]
    for method, label in zip(
        METHODS, ("REMEDI (layer 0)", "Prefix", "Replace", "Unedited"), strict=True
    ):
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
        cells = dict(zip(headers, [c.strip() for c in line.strip("|").split("|")], strict=True))
        latex_line = next(line for line in latex.splitlines() if line.startswith(f"{label} &"))
        latex_cells = [c.strip() for c in latex_line.removesuffix(r" \\").split("&")]
        # The tables show the numbers of the result files, on ROME's scale.
        scores = {}
        for name in ("efficacy", "paraphrase", "neighborhood"):
            result = evaluation.read_result(experiment / method / f"{name}.json", name)
            assert isinstance(result, evaluation.ProbabilityResults)
            scores[name] = 100 * result.metrics.score.mean
            header = name.capitalize()
            assert cells[header] == f"{scores[name]:.1f}"
            latex_cell = latex_cells[headers.index(header)]
            assert latex_cell.removeprefix(r"\textbf{").removesuffix("}") == cells[header]
        generation = evaluation.read_result(experiment / method / "generation.json", "generation")
        assert isinstance(generation, evaluation.GenerationResults)
        assert cells["Fluency"] == f"{100 * generation.fluency.mean:.1f}"
        assert cells["Score"] == f"{counterfact_report.harmonic_mean(list(scores.values())):.1f}"
    assert (experiment / "summary.png").read_bytes().startswith(b"\x89PNG")
    assert (experiment / evaluation.runner.ESSENCE_REFERENCES_FILE).is_file()
    # The printed table has one row per method and says where the plot is.
    for label in ("REMEDI (layer 0)", "Prefix", "Unedited"):
        assert re.search(rf"^\| {re.escape(label)} \| 3 \|", out, flags=re.MULTILINE)
    # Replace covers the cases whose new value another entity of the world has.
    assert re.search(r"^\| Replace \| [123] \|", out, flags=re.MULTILINE)
    assert f"plot: {experiment / 'summary.png'}" in out
    summary = counterfact_report.Summary.from_dict(
        json.loads((experiment / "summary.json").read_text())
    )
    assert [row.method for row in summary.rows] == list(METHODS)

    # A rerun skips every finished benchmark; --rerun recomputes them.
    before = _mtimes(experiment / "remedi")
    assert eval_fact_gen.main(_argv(setup, "eval_full")) == 0
    assert _mtimes(experiment / "remedi") == before
    assert eval_fact_gen.main(_argv(setup, "eval_full", "--rerun", "-b", "efficacy")) == 0
    after = _mtimes(experiment / "remedi")
    assert after["efficacy.json"] != before["efficacy.json"]
    assert after["paraphrase.json"] == before["paraphrase.json"]
    # The summary still shows what earlier invocations finished.
    summary = counterfact_report.Summary.from_dict(
        json.loads((experiment / "summary.json").read_text())
    )
    assert all(value is not None for key, value in summary.rows[0].values.items())

    # Other settings under the same name are refused rather than mixed.
    with pytest.raises(ValueError, match="--rerun"):
        eval_fact_gen.main(_argv(setup, "eval_full", "--seed", "1", "-b", "generation"))


def test_a_crash_mid_run_leaves_only_complete_result_files(setup, results_dir, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(evaluation.BENCHMARKS, "neighborhood", crash)
    argv = _argv(setup, "eval_crash", "--baseline", "unedited", "-b", "efficacy", "neighborhood")
    argv.remove("prefix")
    argv.remove("replace")
    with pytest.raises(RuntimeError, match="simulated crash"):
        eval_fact_gen.main(argv)
    experiment = results_dir / "eval_crash"
    written = sorted(str(p.relative_to(experiment)) for p in experiment.rglob("*") if p.is_file())
    assert written == ["remedi/efficacy.json"]
    assert evaluation.read_result(experiment / "remedi" / "efficacy.json", "efficacy") is not None

    # A crash while a result file is being written leaves no file at all, not half of one.
    monkeypatch.undo()
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(results_dir))
    original_write_text = Path.write_text

    def write_half_then_crash(self: Path, text: str, *args, **kwargs) -> int:
        if self.name.startswith(".neighborhood.json"):
            original_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError("disk full")
        return original_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        eval_fact_gen.main(argv)
    written = sorted(str(p.relative_to(experiment)) for p in experiment.rglob("*") if p.is_file())
    assert written == ["remedi/efficacy.json"]

    # The next run reuses the finished file and completes the rest.
    monkeypatch.setattr(Path, "write_text", original_write_text)
    before = _mtimes(experiment)
    assert eval_fact_gen.main(argv) == 0
    after = _mtimes(experiment)
    assert after["remedi/efficacy.json"] == before["remedi/efficacy.json"]
    assert "unedited/neighborhood.json" in after


def _without_editors_argv(setup: dict[str, Path], name: str, *extra: str) -> list[str]:
    """Arguments evaluating the prefix baseline (and ``extra``) on two cases, with no editors."""
    return [
        *("-n", name, "-m", str(setup["model"]), "--baseline", "prefix", *extra),
        *("--dataset-file", str(setup["data"] / "counterfact.json"), "--max-cases", "2"),
    ]


def test_baselines_run_without_editors(setup, results_dir, capsys):
    argv = _without_editors_argv(setup, "eval_baseline")
    assert eval_fact_gen.main([*argv, "-b", "efficacy", "relation_specificity"]) == 0
    experiment = results_dir / "eval_baseline"
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == ["prefix"]
    assert "| Prefix | 2 |" in capsys.readouterr().out


def test_the_script_says_what_to_pass(capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_fact_gen.parse_args(["-n", "x", "-m", "gpt2"])
    assert exit_info.value.code == 2  # bad usage, as argparse reports it
    assert (
        "nothing to evaluate: pass -e EDITORS_DIR, --methods and/or --baseline(s)"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        eval_fact_gen.parse_args(["-n", "x", "-m", "gpt2", "--baseline", "prefix", "-l", "3"])
    assert exit_info.value.code == 2
    assert "-l/--layer selects an editor: pass -e EDITORS_DIR too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_fact_gen.parse_args(
            ["-n", "x", "-m", "gpt2", "--baseline", "prefix", "--split", "validation"]
        )
    assert "--split validation selects a training run's split" in capsys.readouterr().err


def test_settings_are_chosen_on_the_validation_split_never_the_test_split(setup, results_dir):
    argv = _argv(setup, "eval_validation", "-b", "efficacy", "--split", "validation")
    assert eval_fact_gen.main(argv) == 0
    split = training.load_run(setup["results"] / "editors").split
    efficacy = evaluation.read_result(
        results_dir / "eval_validation" / "remedi" / "efficacy.json", "efficacy"
    )
    evaluated = [f"counterfact/{i}" for i in efficacy.settings.case_ids]
    assert evaluated == split.validation[:3]
    assert not set(evaluated) & set(split.test)


def test_the_reference_split_takes_its_case_ids_and_warns_what_the_run_saw(
    setup, results_dir, monkeypatch, caplog
):
    from remedi import data

    # The toy file is far shorter than 10,000 cases: the reference's rows, scaled down.
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(2, 8))
    argv = _argv(setup, "eval_reference", "-b", "efficacy", "--split", "reference")
    with caplog.at_level("WARNING", logger="remedi.evaluation.splits"):
        assert eval_fact_gen.main(argv) == 0
    records = json.loads((setup["data"] / "counterfact.json").read_text())
    expected = [record["case_id"] for record in records if 2 <= record["case_id"] < 8][:3]
    for method in ("remedi", "prefix"):
        efficacy = evaluation.read_result(
            results_dir / "eval_reference" / method / "efficacy.json", "efficacy"
        )
        assert efficacy.settings.case_ids == expected  # the first 3 (--max-cases) of those rows
    split = training.load_run(setup["results"] / "editors").split
    seen = [i for i in range(2, 8) if f"counterfact/{i}" in {*split.train, *split.validation}]
    assert seen, "the run trained on some of these rows, so the warning must fire"
    assert "not held out from the editors' training run" in caplog.text
    summary = json.loads((results_dir / "eval_reference" / "summary.json").read_text())
    assert "Samples: the reference's evaluation split (case ids 2-7" in " ".join(summary["notes"])
    assert "Not held out from these editors" in " ".join(summary["notes"])


def test_methods_are_named_by_registry_name(capsys):
    args = eval_fact_gen.parse_args(["-n", "x", "-m", "gpt2", "--methods", "rome, ft,ft5"])
    assert args.methods == ["rome", "ft", "ft5"]
    with pytest.raises(SystemExit):
        eval_fact_gen.parse_args(["-n", "x", "-m", "gpt2", "--methods", "rome,romeo"])
    assert "unknown method(s) romeo; registered: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_fact_gen.parse_args(["-n", "x", "-m", "gpt2", "--methods", "remedi,rome"])
    assert "--methods remedi needs the trained editors" in capsys.readouterr().err


def test_methods_and_baselines_share_one_table(setup, results_dir, capsys):
    argv = _without_editors_argv(setup, "eval_methods", "--methods", "unedited,prefix")
    assert eval_fact_gen.main([*argv, "-b", "efficacy"]) == 0
    experiment = results_dir / "eval_methods"
    assert sorted(p.name for p in experiment.iterdir() if p.is_dir()) == ["prefix", "unedited"]
    out = capsys.readouterr().out
    assert "| Prefix | 2 |" in out and "| Unedited | 2 |" in out


@pytest.fixture(scope="module")
def easyedit_run(setup, tmp_path_factory) -> dict[str, Path]:
    """Editors trained on real EasyEdit-format CounterFact records (the first 16 of the 1k
    edit file), with the tiny model of ``setup``."""
    source = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-edit-1k.json"
    if not source.is_file():
        pytest.fail(f"real data file missing: {source} (see ../shared/data/README.md)")
    root = tmp_path_factory.mktemp("easyedit")
    file = root / "counterfact-edit-16.json"
    io.write_json(file, json.loads(source.read_text())[:16])
    run = one_epoch_run(
        "editors_easyedit",
        setup["model"],
        file,
        dataset="counterfact_easyedit",
        test_size=0.25,
    )
    train_runs(setup["results"], run)
    return {"file": file, "editors": setup["results"] / "editors_easyedit"}


@pytest.mark.shared_data
def test_editors_trained_on_easyedit_counterfact_are_evaluated_on_what_it_has(
    setup, easyedit_run, results_dir, capsys
):
    argv = [
        *_argv(setup, "eval_easyedit", "--max-cases", "3"),
        "-b",
        *("efficacy", "paraphrase", "neighborhood", "relation_specificity", "generation"),
    ]
    argv[argv.index("-e") + 1] = str(easyedit_run["editors"])

    assert eval_fact_gen.main(argv) == 0

    experiment = results_dir / "eval_easyedit"
    out = capsys.readouterr().out
    records = {r["case_id"]: r for r in json.loads(easyedit_run["file"].read_text())}
    efficacy = evaluation.read_result(result_file(experiment, "remedi", "efficacy"), "efficacy")
    assert isinstance(efficacy, evaluation.ProbabilityResults) and len(efficacy.cases) == 3
    paraphrase = evaluation.read_result(
        result_file(experiment, "unedited", "paraphrase"), "paraphrase"
    )
    neighborhood = evaluation.read_result(
        result_file(experiment, "unedited", "neighborhood"), "neighborhood"
    )
    assert isinstance(paraphrase, evaluation.ProbabilityResults)
    assert isinstance(neighborhood, evaluation.ProbabilityResults)
    for case in paraphrase.cases:
        assert case.prompts == [records[case.case_id]["rephrase_prompt"]]
    for case in neighborhood.cases:
        assert case.prompts == [records[case.case_id]["locality_prompt"]]
    generation = evaluation.read_result(
        result_file(experiment, "unedited", "generation"), "generation"
    )
    assert isinstance(generation, evaluation.GenerationResults)
    assert [case.prompts for case in generation.cases] == [
        [records[case.case_id]["prompt"]] for case in generation.cases
    ]
    # No replacement entity for any case: Replace's row is empty, and the table is written.
    replace = evaluation.read_result(result_file(experiment, "replace", "efficacy"), "efficacy")
    assert isinstance(replace, evaluation.ProbabilityResults) and replace.cases == []
    assert re.search(r"\| Replace \| 0 \|( n/a \|)+", out)
    assert "Replace: nothing to score" in out
    assert "EasyEdit's reduced format" in out
    summary = counterfact_report.Summary.from_dict(
        json.loads((experiment / "summary.json").read_text())
    )
    assert [row.method for row in summary.rows] == list(METHODS)


@pytest.mark.shared_data
def test_tracing_reads_easyedit_counterfact(setup, easyedit_run, results_dir, capsys):
    argv = ["-m", str(setup["model"]), "-n", "2", "--kinds", "mlp", "--window-sizes", "1"]
    argv += ["--num-samples", "2", "--device", "cpu", "--name", "trace_easyedit"]
    argv += ["-d", "counterfact_easyedit", "--dataset-file", str(easyedit_run["file"])]

    assert trace_counterfact.main(argv) == 0

    assert "of 2 cases answered correctly" in capsys.readouterr().out
    records = json.loads(easyedit_run["file"].read_text())[:2]
    traced = sorted(p.stem for p in (results_dir / "trace_easyedit" / "cases").iterdir())
    assert all(any(str(r["case_id"]) in name for name in traced) for r in records)


def test_hyperparameters_are_set_from_the_command_line(setup, results_dir, tmp_path, capsys):
    hparams = tmp_path / "ft.json"
    hparams.write_text((HPARAMS_DIR / "ft" / "toy.json").read_text(), encoding="utf-8")
    argv = _without_editors_argv(setup, "eval_set", "--methods", "ft", "-b", "efficacy")
    overrides = ["--hparams", f"ft={hparams}", "--set", "ft.lr=0.25", "--set", "ft.layers=[1]"]
    assert eval_fact_gen.main([*argv, *overrides]) == 0
    efficacy = json.loads((results_dir / "eval_set" / "ft" / "efficacy.json").read_text())
    used = json.loads(efficacy["settings"]["method_details"]["hparams"])
    assert (used["lr"], used["layers"]) == (0.25, [1])
    assert used["num_steps"] == json.loads(hparams.read_text())["num_steps"]  # from the file

    # Another value is another configuration: refused in the same experiment, not mixed.
    with pytest.raises(errors.MismatchError, match="other settings"):
        eval_fact_gen.main([*argv, *overrides[:2], "--set", "ft.lr=0.5"])
    with pytest.raises(errors.UsageError, match="has no option lrate"):
        eval_fact_gen.main([*argv, "--hparams", f"ft={hparams}", "--set", "ft.lrate=1"])
    with pytest.raises(SystemExit):
        eval_fact_gen.parse_args([*argv, "--set", "rome.layer=3"])
    assert "--hparams/--set name rome, which this run does not evaluate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_fact_gen.parse_args([*argv, "--set", "ft.lr"])
    assert "expected METHOD.FIELD=VALUE" in capsys.readouterr().err


def test_knowledge_neurons_run_from_the_table_script(setup, results_dir, tmp_path):
    # KN is found in the method registry by name; its packaged toy file, two fields set.
    hparams = tmp_path / "kn.json"
    hparams.write_text((HPARAMS_DIR / "kn" / "toy.json").read_text(), encoding="utf-8")
    argv = _without_editors_argv(setup, "eval_kn", "--methods", "kn", "-b", "efficacy")
    overrides = ["--hparams", f"kn={hparams}", "--set", "kn.steps=4", "--set", "kn.batch_size=2"]
    assert eval_fact_gen.main([*argv, *overrides]) == 0
    efficacy = json.loads((results_dir / "eval_kn" / "kn" / "efficacy.json").read_text())
    used = json.loads(efficacy["settings"]["method_details"]["hparams"])
    assert (used["steps"], used["batch_size"], used["adaptive_threshold"]) == (4, 2, 0.2)
    assert len(efficacy["cases"]) == 2 and len(efficacy["metrics"]["score"]["values"]) == 2
