"""McRae entailment on a tiny random GPT-2: whole-target scores, the three rows, the script.

The norms are a small file in McRae's exact tab-separated format; the LM is random, so these
check definitions and the pipeline, not scores (McRae needs a pretrained LM).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from remedi import data, errors, io, models, training
from remedi.evaluation.probing import entailment
from scripts import eval_entailment
from tests.conftest import one_epoch_run, save_tiny_gpt2, train_runs
from tests.numerics import assert_equal_in_exact_arithmetic

NORMS = {
    "banjo": {"has_strings": 24, "a_musical_instrument": 30, "made_of_wood": 12},
    "guitar": {"has_strings": 30, "a_musical_instrument": 27, "made_of_wood": 15},
    "violin": {"has_strings": 28, "a_musical_instrument": 29, "used_by_orchestras": 10},
    "apple": {"is_red": 20, "beh_-_grows_on_trees": 12, "a_fruit": 25},
    "cherry": {"is_red": 22, "beh_-_grows_on_trees": 14, "a_fruit": 26},
    "hammer": {"made_of_metal": 20, "a_tool": 28, "has_a_handle": 18},
    "axe": {"made_of_metal": 18, "a_tool": 25, "has_a_handle": 20},
    "truck": {"made_of_metal": 16, "has_wheels": 28, "a_vehicle": 27},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("entailment")
    norms = root / "CONCS_FEATS_concstats_brm.txt"
    with norms.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["Concept", "Feature", "WB_Label", "Prod_Freq"])
        for concept, features in NORMS.items():
            for feature, frequency in features.items():
                writer.writerow([concept, feature, "x", frequency])
    model_dir = save_tiny_gpt2(tokenizer, root / "tiny-model")
    results = root / "results"
    train_runs(results, one_epoch_run("editors_mcrae", model_dir, norms, dataset="mcrae"))
    return {"norms": norms, "model": model_dir, "results": results}


def test_target_log_probs_sum_the_targets_tokens(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    mt.model.double()
    texts = ["A banjo is a musical instrument", "An apple is red"]
    targets = ["musical instrument", "red"]
    scores = entailment.target_log_probs(mt, texts, targets)
    for text, target, score in zip(texts, targets, scores.tolist(), strict=True):
        encoded = mt.tokenizer(text, return_offsets_mapping=True)
        start = text.rfind(target)
        positions = [
            i for i, (s, e) in enumerate(encoded["offset_mapping"]) if s < len(text) and e > start
        ]
        ids = torch.tensor([encoded["input_ids"]])
        with torch.no_grad():
            logps = torch.log_softmax(mt.model(ids).logits[0].double(), dim=-1)
        expected = sum(float(logps[i - 1, encoded["input_ids"][i]]) for i in positions)
        # The benchmark takes log-softmax in float32: agreement to float32 rounding.
        assert_equal_in_exact_arithmetic(score, expected, torch.float32)


def test_rows_no_edit_prefix_and_remedi(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    samples = [dict(row) for row in data.load_dataset("mcrae", file=setup["norms"])][:6]
    editor = training.load_run_editor(setup["results"] / "editors_mcrae", 0, mt=mt)
    none = entailment.entailment(mt, samples, "unedited", batch_size=7)
    prefix = entailment.entailment(mt, samples, "prefix", batch_size=7)
    remedi = entailment.entailment(mt, samples, "remedi", editor, batch_size=7)
    assert none.metrics.delta_p == {"co": 0.0, "orig": 0.0, "unrel": 0.0}
    for result in (prefix, remedi):
        for sample, unedited in zip(result.samples, none.samples, strict=True):
            for kind in entailment.KINDS:
                before = [f.logp_pre for f in sample.features[kind]]
                assert before == pytest.approx([f.logp_pre for f in unedited.features[kind]])
        after = [f.logp_post for s in result.samples for f in s.features["co"]]
        assert after != pytest.approx(
            [f.logp_pre for s in result.samples for f in s.features["co"]]
        )
    co = [f for s in remedi.samples for f in s.features["co"]]
    assert co and all(f.logp_ref is not None and f.logp_ref <= 0 for f in co)
    assert all(f.logp_ref is None for s in remedi.samples for f in s.features["unrel"])
    # REMEDI edits the entity in every text, the unrelated features' too.
    unrelated = [f for s in remedi.samples for f in s.features["unrel"]]
    assert [f.logp_post for f in unrelated] != pytest.approx([f.logp_pre for f in unrelated])
    with pytest.raises(errors.UsageError, match="needs a trained editor"):
        entailment.entailment(mt, samples, "remedi")


def test_prefix_leaves_the_unrelated_features_as_the_reference_unless_asked(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    samples = [dict(row) for row in data.load_dataset("mcrae", file=setup["norms"])][:6]
    # The reference's Prefix reads the unrelated features without the context
    # (its scripts/eval_entailment.py:21): their Δp is exactly 0.
    prefix = entailment.entailment(mt, samples, "prefix", batch_size=7)
    unrelated = [f for s in prefix.samples for f in s.features["unrel"]]
    assert unrelated and all(f.logp_post == f.logp_pre for f in unrelated)
    assert prefix.metrics.delta_p["unrel"] == 0.0
    assert prefix.settings == entailment.EntailmentSettings(rewrite_unrelated=False)
    assert prefix.metrics.delta_p["co"] != 0.0 and prefix.metrics.delta_p["orig"] != 0.0
    # The option: the context before every feature, the unrelated ones too.
    settings = entailment.EntailmentSettings(rewrite_unrelated=True)
    everywhere = entailment.entailment(mt, samples, "prefix", batch_size=7, settings=settings)
    unrelated = [f for s in everywhere.samples for f in s.features["unrel"]]
    assert [f.logp_post for f in unrelated] != pytest.approx([f.logp_pre for f in unrelated])
    for kind in ("co", "orig"):
        assert everywhere.metrics.delta_p[kind] == pytest.approx(prefix.metrics.delta_p[kind])


def test_norms_are_compared_with_two_decimals_and_zeros_left_out_as_the_reference(setup):
    mt = models.load_model(str(setup["model"]), device="cpu")
    [sample] = [dict(row) for row in data.load_dataset("mcrae", file=setup["norms"])][:1]
    co = [dict(feature) for feature in sample["co_features"]][:3]
    assert len(co) == 3
    # 0.004 is written "0.00" by the reference (its data.py:769) and left out (benchmarks.py:1582);
    # 0.126 is written "0.13".
    for feature, co_prob in zip(co, (0.004, 0.126, 0.3), strict=True):
        feature["co_prob"] = co_prob
    original = [dict(feature) for feature in sample["original_features"]]
    original[0]["prob"] = 0.4666  # 14 of 30 participants: "0.47"
    sample = {**sample, "co_features": co, "original_features": original}

    rounded = entailment.entailment(mt, [sample], "unedited").samples[0].features
    assert [math.exp(f.logp_ref or 0) for f in rounded["co"]] == pytest.approx([0.13, 0.3])
    assert [f.feature for f in rounded["co"]] == [f["feature_fluent"] for f in co[1:]]
    assert math.exp(rounded["orig"][0].logp_ref or 0) == pytest.approx(0.47)

    exact_settings = entailment.EntailmentSettings(norm_digits=None)
    exact = entailment.entailment(mt, [sample], "unedited", settings=exact_settings)
    co_refs = [math.exp(f.logp_ref or 0) for f in exact.samples[0].features["co"]]
    assert co_refs == pytest.approx([0.004, 0.126, 0.3])
    assert math.exp(exact.samples[0].features["orig"][0].logp_ref or 0) == pytest.approx(0.4666)


def test_pearson_is_nan_when_undefined():
    assert math.isnan(entailment.pearson([1.0], [2.0]))
    assert math.isnan(entailment.pearson([1.0, 1.0], [2.0, 3.0]))
    assert entailment.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(0.9933, abs=1e-4)


def test_script_writes_the_three_rows_and_reuses_results(setup, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-n", "ent", "-e", str(setup["results"] / "editors_mcrae"), "-m", str(setup["model"])]
    argv += ["--device", "cpu"]
    assert eval_entailment.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("No Edit", "Prefix", "REMEDI"):
        assert f"| {label} |" in out
    assert "its unrelated Δp is 0 by construction" in out
    experiment = setup["results"] / "ent"
    files = sorted(experiment.glob("*/entailment.json"))
    assert len(files) == 3
    mtimes = [path.stat().st_mtime_ns for path in files]
    assert eval_entailment.main(argv) == 0
    assert [path.stat().st_mtime_ns for path in files] == mtimes
    assert (experiment / "summary.tex").is_file() and (experiment / "summary.png").is_file()
    # Other settings recompute every row instead of mixing two settings in one table.
    capsys.readouterr()
    assert eval_entailment.main([*argv, "--rewrite-unrelated", "--exact-norms"]) == 0
    assert (
        "Exact norms. Prefix also puts the context before the unrelated" in capsys.readouterr().out
    )
    assert all(path.stat().st_mtime_ns != mtimes[i] for i, path in enumerate(files))
    prefix = entailment.EntailmentResults.from_dict(
        io.read_json(experiment / "prefix" / "entailment.json", "entailment result")
    )
    assert prefix.settings == entailment.EntailmentSettings(None, rewrite_unrelated=True)
    assert prefix.metrics.delta_p["unrel"] != 0.0


def test_ent_sweep_reads_each_layers_remedi_result(setup, monkeypatch):
    from remedi import sweep

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = ["-e", str(setup["results"] / "editors_mcrae"), "-m", str(setup["model"])]
    argv += ["-l", "0", "--device", "cpu", "--max-samples", "3"]
    assert eval_entailment.main(["-n", "sweep_ent/layer_0", *argv]) == 0
    result, _ = sweep.write_sweep("ent", setup["results"] / "sweep_ent", [0, 1])
    assert [point.layer for point in result.points] == [0]  # layer 1 was never evaluated
    assert set(result.points[0].metrics) == {
        "co.delta_p",
        "orig.delta_p",
        "unrel.delta_p",
        "co.r",
        "orig.r",
    }


def test_the_reference_split_takes_its_rows_and_other_samples_are_recomputed(
    setup, monkeypatch, caplog
):
    from remedi.evaluation import splits

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    # The tiny norms make a few dozen samples: the reference's rows, scaled down.
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(1, 5))
    run = setup["results"] / "editors_mcrae"
    argv = ["-n", "ent_reference", "-e", str(run), "-m", str(setup["model"]), "--device", "cpu"]
    with caplog.at_level("WARNING", logger="remedi.evaluation.splits"):
        assert eval_entailment.main([*argv, "--split", "reference"]) == 0
    ids = data.load_dataset("mcrae", file=setup["norms"])["id"]
    experiment = setup["results"] / "ent_reference"

    def evaluated() -> list[str]:
        stored = io.read_json(experiment / "remedi" / "entailment.json", "entailment result")
        return [sample["id"] for sample in stored["samples"]]

    assert evaluated() == ids[1:5]
    record = training.load_run(run)
    overlap = splits.training_overlap(record, ids[1:5], {})
    assert overlap.trained + overlap.early_stopping > 0  # the run drew from these rows
    assert "not held out from the editors' training run" in caplog.text
    summary = (experiment / "summary.md").read_text()
    assert "Samples: the reference's evaluation split (rows 1-4, its train[1:5])." in summary
    # The same experiment on the run's test split: other samples, so every row is recomputed.
    assert eval_entailment.main(argv) == 0
    assert evaluated() == record.split.test
