"""Bias in Bios as a probe (Bios-Med): labels, predictions, metrics, the script and its sweeps.

The LM is a tiny random GPT-2 and the data the toy world's Bias in Bios export, so these check
the definitions and the pipeline, not the scores (the toy-world numbers are in the report).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from remedi import data, editors, errors, io, metrics, models, precompute, sweep, training
from remedi.evaluation.probing import bios_classification as bios_cls
from remedi.evaluation.probing import classification as cls
from remedi.evaluation.probing.mediation import prompt_in_context
from remedi.toy import export
from remedi.toy.world import generate_world
from scripts import eval_bias_cls
from tests.conftest import one_epoch_run, save_tiny_gpt2, train_runs
from tests.test_classification import assert_every_row_written, probe_argv


def _sample(
    target: str, model_top: list[str], probe_top: list[str]
) -> bios_cls.BiosClassificationSample:
    return bios_cls.BiosClassificationSample(
        id=target,
        target=target,
        model_top_k=model_top,
        model_top_k_logp=[-1.0] * len(model_top),
        probe_top_k=probe_top,
        probe_top_k_scores=[1.0] * len(probe_top),
    )


def test_an_error_is_the_lms_top_label_and_predicted_when_the_probe_misses_it():
    samples = [
        _sample("nurse", ["nurse", "poet", "chef"], ["poet", "nurse", "chef"]),  # tn
        _sample("nurse", ["poet", "nurse", "chef"], ["nurse", "chef", "dj"]),  # tp
        _sample("chef", ["poet", "chef", "dj"], ["poet", "dj", "chef"]),  # fn
        _sample("chef", ["chef", "dj", "poet"], ["dj", "poet", "nurse"]),  # fp
        _sample("dj", ["nurse", "dj", "poet"], ["chef", "poet", "dj"]),  # tp
    ]
    assert [s.label for s in samples] == [False, True, True, False, True]
    assert [s.prediction for s in samples] == [False, True, False, True, True]
    result = bios_cls.bios_metrics(samples, k=3)
    assert result.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp 2, fp 1, fn 1
    assert result.mcc == pytest.approx((2 * 1 - 1 * 1) / (3 * 3 * 2 * 2) ** 0.5)  # tn 1
    assert result.label_rate == pytest.approx(0.6)
    assert result.probe_recall_1 == pytest.approx(1 / 5)
    assert result.model_recall_1 == pytest.approx(2 / 5)
    assert result.model_recall_k == pytest.approx(1.0)
    control = bios_cls.bios_metrics(samples, k=3, control_task=True, control_task_seed=1)
    assert control.label_rate == result.label_rate  # the balance is kept


def test_each_label_gets_the_samples_attribute_or_the_generic_occupation_attribute():
    row = {
        "id": "bios/1",
        "entity": "Ana",
        "prompt": "Ana works as a",
        "context": "Since 2010, Ana is a nurse in Rome.",
        "attribute": "is a nurse in Rome",
        "target_mediated": "nurse",
    }
    inputs = bios_cls.label_attributes(row, ["chef", "nurse"])
    assert inputs[0]["attribute"] == "has the occupation of chef"
    assert inputs[0]["context"] == "Ana has the occupation of chef"
    assert inputs[1]["attribute"] == "is a nurse in Rome"
    # As the reference (benchmarks.py:1162): "<entity> <attribute>", not the bio's sentence.
    assert inputs[1]["context"] == "Ana is a nurse in Rome"
    assert all(entry["prompt"] == "Ana works as a" for entry in inputs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """The toy Bias in Bios export, a tiny model on disk, trained and random-init runs."""
    root = tmp_path_factory.mktemp("bios_probe")
    file = root / "data" / "biosbias.json"
    io.write_json(file, export.biosbias_records(generate_world(seed=0, num_entities=16)))
    model_dir = save_tiny_gpt2(tokenizer, root / "tiny-model")
    results_dir = root / "results"
    train_runs(
        results_dir,
        *(
            one_epoch_run(name, model_dir, file, dataset="biosbias", random_init=random_init)
            for name, random_init in (("editors", False), ("editors_random", True))
        ),
    )
    return {"file": file, "model": model_dir, "results": results_dir}


def test_labels_are_the_lms_top_occupation_after_the_bio(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    mt.model.double()  # float64: the argmax below must not flip on float32 rounding
    rows = [dict(row) for row in data.load_biosbias(setup["file"]).select(range(8))]
    editor = training.load_run_editor(setup["results"] / "editors", 0, "linear", mt)
    result = bios_cls.bios_classification(mt, cls.identity_editor(mt, editor), rows, top_k=3)
    labels = result.settings.labels
    assert labels == sorted({row["target_mediated"] for row in rows})
    label_ids = precompute.target_token_ids(mt.tokenizer, labels)
    for row, sample in zip(rows, result.samples, strict=True):
        text = prompt_in_context(row["context"], row["prompt"])
        inputs = mt.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = mt.model(**inputs).logits[0, -1]
        assert sample.model_top_k[0] == labels[int(logits[label_ids].argmax())]
        assert sample.label == (sample.model_top_k[0] != row["target_mediated"])
        assert len(sample.probe_top_k) == 3


def test_every_labels_direction_reads_the_entity_then_the_attribute(setup):
    """The probe's score of each label is the entity's state times the editor's direction on
    ``"<entity> <attribute>"``, for the true occupation too, however the bio's sentence reads."""
    mt = models.load_model(str(setup["model"]), device="cpu")
    mt.model.double()
    editor = training.load_run_editor(setup["results"] / "editors", 0, "linear", mt)
    rows = [dict(row) for row in data.load_biosbias(setup["file"]).select(range(6))]
    for row in rows:  # words before the name: the sentence is not "<entity> <attribute>"
        row["context"] = f"In short, {row['context']}"
    labels = sorted({row["target_mediated"] for row in rows})
    result = bios_cls.bios_classification(
        mt, editor, rows, labels=labels, top_k=len(labels), normalize=False
    )
    readings = bios_cls.read_label_prompts(mt, rows, labels, [editor.layer])
    inputs = [
        {
            "id": f"{row['id']}/{label}",
            "entity": row["entity"],
            "prompt": row["prompt"],
            "context": f"{row['entity']} {attribute}",
            "attribute": attribute,
        }
        for row in rows
        for label in labels
        for attribute in [
            row["attribute"]
            if label == row["target_mediated"]
            else f"has the occupation of {label}"
        ]
    ]
    directions = editors.editor_directions(mt, editor, inputs).cpu().double()
    expected = torch.einsum(
        "nh,nlh->nl",
        readings.entity_last[editor.layer].double(),
        directions.view(len(rows), len(labels), -1),
    )
    for sample, scores in zip(result.samples, expected.tolist(), strict=True):
        by_label = dict(zip(sample.probe_top_k, sample.probe_top_k_scores, strict=True))
        assert by_label == pytest.approx(dict(zip(labels, scores, strict=True)), rel=1e-6)


def test_samples_without_an_occupation_are_refused_by_name(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    editor = training.load_run_editor(setup["results"] / "editors", 0, "linear", mt)
    rows = [dict(row) for row in data.load_biosbias(setup["file"]).select(range(3))]
    rows[1]["target_mediated"] = ""
    with pytest.raises(errors.SampleError, match=rows[1]["id"]):
        bios_cls.bios_classification(mt, editor, rows)


def test_bias_cls_script_writes_every_row_resumes_and_feeds_the_sweep(setup, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = probe_argv(setup, "bios_cls")
    assert eval_bias_cls.main(argv) == 0
    out = capsys.readouterr().out
    assert "Bios-Med F1" in out
    experiment = setup["results"] / "bios_cls"
    control = assert_every_row_written(bios_cls, experiment, out, control_layer=0)
    no_signal = metrics.constant_positive_f1(control.metrics.label_rate)
    assert f"F1 of calling every sample an error: {no_signal:.2f}" in out
    mtimes = {p: p.stat().st_mtime_ns for p in experiment.rglob("bios_cls_*.json")}
    assert eval_bias_cls.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("bios_cls_*.json")} == mtimes

    swept, files = sweep.write_sweep("cls_biosbias", experiment, [0, 1])
    assert [point.layer for point in swept.points] == [0, 1]
    f1 = {point.layer: point.metrics["f1"] for point in swept.points}
    assert swept.best_layer == max(f1, key=lambda layer: (f1[layer], -layer))
    assert (experiment / "sweep_layers.png").is_file() and files.markdown.is_file()


def test_bias_cls_script_refuses_a_counterfact_run(setup, monkeypatch, tmp_path):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    run = training.load_run(setup["results"] / "editors")
    run.args.dataset = "counterfact"
    fake = tmp_path / "cf_run"
    fake.mkdir()
    io.write_json(fake / "args.json", run.to_dict())
    with pytest.raises(errors.MismatchError, match=r"x\.train\.biosbias"):
        eval_bias_cls.main(["-n", "x", "-e", str(fake), "-m", str(setup["model"])])


def test_gen_biosbias_sweep_reads_remedis_row_of_each_layers_summary(tmp_path):
    for layer, top1 in ((0, 40.0), (1, 70.0), (2, 55.0)):
        rows = [
            {"method": "unedited", "decontextual": {"top1_accuracy": 90.0, "k": 3}},
            {"method": "remedi", "decontextual": {"top1_accuracy": top1, "k": 3}},
        ]
        io.write_json(sweep.layer_dir(tmp_path, layer) / "summary.json", {"rows": rows})
    result, _ = sweep.write_sweep("gen_biosbias", tmp_path, [0, 1, 2, 3])
    assert [point.layer for point in result.points] == [0, 1, 2]
    assert result.best_layer == 1
    assert result.points[1].metrics == {"decontextual.top1_accuracy": 70.0}
    # No fluency in these summaries: the reference's criterion uses top-1 alone and says so.
    assert (result.terms, result.missing_terms) == (
        ["decontextual.top1_accuracy"],
        ["decontextual.fluency"],
    )
