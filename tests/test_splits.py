"""Which samples an evaluation takes: the reference's rows of each dataset, the run's splits, how
much of the reference's rows a run has seen, and the combinations of flags that mean nothing."""

from __future__ import annotations

import logging
import pickle

import pytest

from remedi import data, env, errors, training
from remedi.evaluation import splits


def _counterfact_ids(case_ids) -> list[str]:
    return [f"counterfact/{case_id}" for case_id in case_ids]


def test_counterfacts_reference_rows_are_case_ids_5000_to_9999_in_file_order():
    # Case 5001 was dropped by the loader, so the positions of later samples moved by one: the
    # reference's rows are case ids (its file holds case i at row i), not positions here.
    case_ids = [case for case in range(10_500) if case != 5001]
    ids = _counterfact_ids(case_ids)
    chosen = data.reference_split_ids("counterfact", ids)
    assert chosen == _counterfact_ids([5000, *range(5002, 10_000)])
    small = data.reference_split_ids("counterfact_easyedit", ids, small=True)
    assert small == _counterfact_ids([5000, *range(5002, 6000)])
    # A file that holds some of the cases, out of position (EasyEdit's split files).
    scattered = _counterfact_ids([3, 9999, 10_000, 4999, 5000, 12])
    assert data.reference_split_ids("counterfact", scattered) == _counterfact_ids([9999, 5000])


def test_other_datasets_reference_rows_are_positions_5000_to_9999():
    ids = [f"sample_{index}" for index in range(12_000)]
    assert data.reference_split_ids("mcrae", ids) == ids[5000:10_000]
    assert data.reference_split_ids("biosbias", ids, small=True) == ids[5000:6000]
    # A shorter file gives the rows it has, as the reference's slice would.
    assert data.reference_split_ids("biosbias", ids[:7000]) == ids[5000:7000]


def test_an_empty_reference_split_and_a_foreign_id_say_what_to_do():
    with pytest.raises(errors.UsageError, match=r"rows 5000-9999.*holds 300 samples.*--split test"):
        data.reference_split_ids("mcrae", [f"s{i}" for i in range(300)])
    with pytest.raises(errors.UsageError, match=r"case ids 5000-5999.*--split test"):
        data.reference_split_ids("counterfact", _counterfact_ids(range(100)), small=True)
    with pytest.raises(errors.UsageError, match="not a CounterFact sample id"):
        data.reference_split_ids("counterfact", ["Jane_Smith"])


def test_bias_in_bios_reference_rows_count_only_the_kept_samples(tmp_path, monkeypatch):
    from tests.test_biosbias import RECORDS

    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "data"))
    source = tmp_path / "BIOS.pkl"
    source.write_bytes(pickle.dumps(RECORDS))
    samples = data.load_biosbias(source)
    # Kept: Jane, Maria, Li, Jane again; record 3 (Omar, dropped) is not a row of the file the
    # reference evaluates, so rows 2-3 are Li and the second Jane.
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(2, 4))
    entity_of = dict(zip(samples["id"], samples["entity"], strict=True))
    chosen = splits.select_split("biosbias", samples["id"], entity_of, "reference")
    assert chosen.ids == ["Li_Chen", "Jane_Ann_Smith_2"]
    assert chosen.notes == ["Samples: the reference's evaluation split (rows 2-3, its train[2:4])."]


@pytest.mark.shared_data
def test_easyedits_train_file_gives_the_reference_cases_it_holds():
    file = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-train.json"
    records = data.load_counterfact_easyedit_records(file)
    case_ids = list(records["case_id"])
    chosen = data.reference_split_ids("counterfact_easyedit", _counterfact_ids(case_ids))
    expected = [case for case in case_ids if 5000 <= case < 10_000]
    assert chosen == _counterfact_ids(expected)
    # 2,295 of the file's 10,000 cases are in 5000-9999; the loader dropped case 8594 (its new
    # target, Ankara, is its subject).
    assert len(chosen) == 2294 and "counterfact/8594" not in chosen
    small = data.reference_split_ids("counterfact_easyedit", _counterfact_ids(case_ids), True)
    assert len(small) == 449


def _record(train: list[str], validation: list[str], test: list[str]) -> training.RunRecord:
    args = training.RunArgs(name="run", model="gpt2", dataset="mcrae")
    split = training.RunSplit(train=train, validation=validation, test=test)
    return training.RunRecord(args=args, seed=0, model_name="gpt2", hidden_size=8, split=split)


ENTITIES = {"a": "apple", "b": "banjo", "c": "cherry", "d": "drum", "e": "apple", "f": "fig"}


def test_the_overlap_counts_trained_early_stopping_and_shared_entity_samples():
    record = _record(train=["a", "b"], validation=["c"], test=["d"])
    overlap = splits.training_overlap(record, ["a", "c", "d", "e", "f"], ENTITIES)
    # e is about the apple that a (trained on) is about; d and f are about unseen entities.
    assert overlap == splits.TrainingOverlap(5, trained=1, early_stopping=1, shared_entity=1)
    assert overlap.describe() == (
        "of 5 evaluated samples, 1 were in the editors' training split, 1 in their validation "
        "(early-stopping) split, and 1 more share an entity with those"
    )


def test_a_reference_split_that_overlaps_the_run_warns_and_says_so_in_the_notes(
    monkeypatch, caplog
):
    ids = list(ENTITIES)
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(2, 6))  # c, d, e, f
    record = _record(train=["a", "b"], validation=["c"], test=["d"])
    with caplog.at_level(logging.WARNING, logger="remedi.evaluation.splits"):
        chosen = splits.select_split("mcrae", ids, ENTITIES, "reference", record)
    assert chosen.ids == ["c", "d", "e", "f"]
    assert chosen.overlap == splits.TrainingOverlap(4, 0, 1, 1)
    [warning] = caplog.records
    assert "not held out from the editors' training run" in warning.getMessage()
    assert "Not held out from these editors" in chosen.notes[1]

    caplog.clear()
    held_out = _record(train=["a"], validation=["b"], test=["c", "d", "e", "f"])
    with caplog.at_level(logging.WARNING, logger="remedi.evaluation.splits"):
        chosen = splits.select_split("mcrae", ids, {**ENTITIES, "e": "eel"}, "reference", held_out)
    assert not caplog.records and len(chosen.notes) == 1


def test_the_runs_own_splits_and_every_sample_without_a_run():
    ids = list(ENTITIES)
    record = _record(train=["a", "b"], validation=["c"], test=["f", "d"])
    assert splits.select_split("mcrae", ids, ENTITIES, "test", record).ids == ["f", "d"]
    assert splits.select_split("mcrae", ids, ENTITIES, "validation", record).ids == ["c"]
    assert splits.select_split("mcrae", ids, ENTITIES).ids == ids  # no run: every sample


@pytest.mark.parametrize(
    ("split", "small", "has_run", "match"),
    [
        ("test", True, True, "--small takes the reference's 1,000 sweep rows"),
        ("validation", True, True, "goes with --split reference"),
        ("validation", False, False, "--split validation selects a training run's split"),
        ("train", False, True, "unknown split 'train'"),
    ],
)
def test_combinations_that_mean_nothing_are_refused(split, small, has_run, match):
    with pytest.raises(errors.UsageError, match=match):
        splits.check_split_arguments(split, small, has_run)


@pytest.mark.parametrize("script", ["eval_fact_gen", "eval_bias_gen", "eval_entailment"])
def test_the_scripts_refuse_them_as_usage_errors(script, capsys):
    import importlib

    module = importlib.import_module(f"scripts.{script}")
    extra = ["--baseline", "prefix"] if script == "eval_fact_gen" else []
    for bad, message in (
        (["--small"], "goes with --split reference"),
        (["--split", "validation"], "--split validation selects a training run's split"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            module.parse_args(["-n", "x", "-m", "gpt2", *extra, *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err
        if bad == ["--small"]:  # the fix names this script's own limit flag
            flag = "--max-cases" if script == "eval_fact_gen" else "--max-samples"
            assert f"pass {flag} N" in err
            module.parse_args(["-n", "x", "-m", "gpt2", *extra, flag, "3"])  # and it exists
    args = module.parse_args(["-n", "x", "-m", "gpt2", *extra, "--split", "reference", "--small"])
    assert (args.split, args.small) == ("reference", True)
