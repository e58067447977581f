"""End to end on the small toy world: train a tiny editor, evaluate it with the baselines.

Slow (builds the session's toy-small world, trains an editor for a few epochs), so it checks
what only a model that knows facts can show: the editor beats the unedited model on held-out
entities, the neighborhood is untouched, and the files, table and plot are all written.
"""

from __future__ import annotations

import json

import pytest

from remedi import evaluation, training
from remedi.evaluation.editing import counterfact_report
from scripts import eval_fact_gen
from tests.toy_fixtures import BuiltToyWorld, toy_dirs

pytestmark = pytest.mark.slow


def test_a_trained_editor_beats_unedited_on_held_out_toy_entities(
    small_world: BuiltToyWorld,
    tmp_path,
    monkeypatch,
    capsys,
):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    layer = 0
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        training.train_run(
            training.RunArgs(
                name="editors",
                model="toy-small",
                dataset_file=str(small_world.paths.counterfact_file),
                layers=[layer],
                max_epochs=6,
                seed=0,
                # The main job's toy recipe (remedi.settings.TOY_TRAINING).
                use_all_entity_tokens=True,
                use_last_attribute_token=True,
                lr=1e-2,
                lam_kl=1.0,
            )
        )
        argv = [
            "-n",
            "eval",
            "-e",
            str(tmp_path / "results" / "editors"),
            "-m",
            "toy-small",
            "-l",
            str(layer),
            "--baselines",
            "prefix",
            "replace",
            "unedited",
            "--dataset-file",
            str(small_world.paths.counterfact_file),
            "--max-cases",
            "8",
            "--max-length",
            "40",
        ]
        assert eval_fact_gen.main(argv) == 0
        out = capsys.readouterr().out
        experiment = tmp_path / "results" / "eval"
        before = {p: p.stat().st_mtime_ns for p in experiment.glob("*/*.json")}
        assert len(before) == 4 * len(evaluation.BENCHMARKS)
        assert eval_fact_gen.main(argv) == 0  # everything finished: nothing recomputed
        assert {p: p.stat().st_mtime_ns for p in experiment.glob("*/*.json")} == before
        # Same seed, same machine: a fresh evaluation writes byte-identical results.
        assert eval_fact_gen.main(["-n", "again", *argv[2:]]) == 0
        again = tmp_path / "results" / "again"
        for path in before:
            assert (again / path.relative_to(experiment)).read_bytes() == path.read_bytes()

    summary = counterfact_report.Summary.from_dict(
        json.loads((experiment / "summary.json").read_text())
    )
    rows = {row.method: row.values for row in summary.rows}
    assert list(rows) == ["remedi", "prefix", "replace", "unedited"]
    # The cases ask the default paraphrase prompts: on the toy, templates held out from LM
    # training, which the small LM answers right for ~64% of facts, and wrongly with the new value
    # rarely (1 of these 8 cases); the editor moves held-out entities towards the new value.
    assert rows["unedited"]["efficacy"] is not None and rows["unedited"]["efficacy"] <= 25.0
    magnitude = {
        method: evaluation.read_result(experiment / method / "efficacy.json", "efficacy")
        for method in ("remedi", "unedited")
    }
    assert isinstance(magnitude["remedi"], evaluation.ProbabilityResults)
    assert isinstance(magnitude["unedited"], evaluation.ProbabilityResults)
    remedi_gain = magnitude["remedi"].metrics.magnitude.mean
    assert remedi_gain > magnitude["unedited"].metrics.magnitude.mean + 0.01
    # Neighborhood prompts never mention the edited entity: REMEDI leaves them as they were.
    assert rows["remedi"]["neighborhood"] == rows["unedited"]["neighborhood"]
    # Only the world's relation prompts make relation specificity measurable: it is there.
    assert rows["remedi"]["relation_specificity"] is not None
    assert (experiment / "summary.png").stat().st_size > 10_000
    assert "REMEDI (layer 0)" in out
    neighborhood = evaluation.read_result(
        experiment / "remedi" / "neighborhood.json", "neighborhood"
    )
    assert isinstance(neighborhood, evaluation.ProbabilityResults)
    assert neighborhood.prompts_mentioning_entity == 0


def test_knowledge_neurons_from_the_table_script_on_the_toy(
    small_world: BuiltToyWorld, tmp_path, monkeypatch
):
    # KN by name on a toy world, with its packaged toy.json: the edit beats unedited on the
    # rewrite prompts it was made with (KN erases the old answer, README's CounterFact table).
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    argv = [
        *("-n", "kn", "-m", "toy-small", "--methods", "kn", "--baselines", "unedited"),
        *("--dataset-file", str(small_world.paths.counterfact_file), "--max-cases", "6"),
        *("--counterfact-prompt", "rewrite", "-b", "efficacy", "neighborhood"),
    ]
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        assert eval_fact_gen.main(argv) == 0
    experiment = tmp_path / "results" / "kn"
    summary = counterfact_report.Summary.from_dict(
        json.loads((experiment / "summary.json").read_text())
    )
    rows = {row.method: row.values for row in summary.rows}
    assert list(rows) == ["unedited", "kn"]
    assert rows["kn"]["efficacy"] > rows["unedited"]["efficacy"]
    used = json.loads(
        json.loads((experiment / "kn" / "efficacy.json").read_text())["settings"]["method_details"][
            "hparams"
        ]
    )
    assert (used["steps"], used["adaptive_threshold"]) == (20, 0.2)  # hparams/kn/toy.json
