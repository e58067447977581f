"""Samples, the CounterFact loaders (ROME and EasyEdit formats), downloads, and splits."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from remedi import data, env

FIXTURES = Path(__file__).parent / "fixtures"
COUNTERFACT_FIXTURE = FIXTURES / "counterfact_sample.json"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "data"))


def test_counterfact_samples_follow_the_reference_construction(caplog):
    with caplog.at_level(logging.WARNING, logger="remedi.data"):
        samples = data.load_dataset("counterfact", file=COUNTERFACT_FIXTURE)

    assert len(samples) == 4
    first = samples[0]
    assert first == {
        "id": "counterfact/0",
        "source": "counterfact",
        "entity": "Danielle Darrieux",
        # The first paraphrase prompt, cleaned as in the reference (see
        # tests/test_counterfact_prompts.py); the context states the rewrite.
        "prompt": "Danielle Darrieux, a native",
        "context": "The mother tongue of Danielle Darrieux is English",
        "attribute": "is English",
        "target_mediated": "English",
        "target_unmediated": "French",
    }
    # Punctuation that joins the entity to the rest is not part of the attribute.
    assert samples[3]["attribute"] == "who works for Nordavia"
    # The two unusable records are dropped, and the log says so with reasons.
    assert "dropped 2 of 6 records" in caplog.text
    assert "1 empty target" in caplog.text
    assert "1 subject not in prompt" in caplog.text


def test_counterfact_records_keep_the_rome_fields():
    records = data.load_counterfact_records(COUNTERFACT_FIXTURE)
    assert records[0]["requested_rewrite"]["target_new"] == {"str": "English", "id": "Q1860"}
    assert records[1]["paraphrase_prompts"] == [
        "Kelo Vantri is a resident of",
        "Kelo Vantri has a house in",
    ]
    assert records[2]["attribute_prompts"] == []
    assert records[0]["requested_rewrite"]["relation_id"] == "P103"
    # Samples and records join on the id.
    samples = data.counterfact_samples(records)
    assert [f"counterfact/{case_id}" for case_id in records["case_id"]] == samples["id"]


def test_a_file_that_is_not_counterfact_names_the_file_and_first_bad_record(tmp_path):
    records = json.loads(COUNTERFACT_FIXTURE.read_text())
    del records[2]["requested_rewrite"]["target_true"]
    bad_file = tmp_path / "not_counterfact.json"
    bad_file.write_text(json.dumps(records))
    with pytest.raises(data.DatasetFormatError) as error:
        data.load_dataset("counterfact", file=bad_file)
    message = str(error.value)
    assert str(bad_file) in message
    assert "record 2" in message
    assert "target_true" in message

    not_a_list = tmp_path / "object.json"
    not_a_list.write_text('{"hello": 1}')
    with pytest.raises(data.DatasetFormatError, match="JSON list"):
        data.load_dataset("counterfact", file=not_a_list)


def test_an_easyedit_file_given_as_rome_format_says_which_loader_to_use(tmp_path):
    easyedit_file = tmp_path / "easyedit.json"
    easyedit_file.write_text(
        json.dumps(
            [
                {
                    "case_id": 1,
                    "prompt": "Kelo Vantri speaks",
                    "subject": "Kelo Vantri",
                    "target_new": "Spanish",
                    "ground_truth": "Norwegian",
                }
            ]
        )
    )
    with pytest.raises(data.DatasetFormatError, match="-d counterfact_easyedit"):
        data.load_dataset("counterfact", file=easyedit_file)
    with pytest.raises(data.DatasetFormatError, match="-d counterfact"):
        data.load_dataset("counterfact_easyedit", file=COUNTERFACT_FIXTURE)


@pytest.mark.shared_data
def test_easyedit_format_on_a_real_file():
    file = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-edit-1k.json"
    if not file.is_file():
        pytest.fail(
            f"real data file missing: {file}. Set REMEDI_SHARED_DATA to the folder holding "
            "counterfact_easyedit/ (see ../shared/data/README.md)"
        )
    raw = json.loads(file.read_text())
    samples = data.load_dataset("counterfact_easyedit", file=file, prompt_source="rewrite")

    assert len(samples) == len(raw) == 1000
    assert samples[0]["id"] == f"counterfact/{raw[0]['case_id']}"
    assert samples[0]["source"] == "counterfact_easyedit"
    for sample, record in zip(samples, raw, strict=True):
        assert sample["entity"] == record["subject"]
        assert sample["prompt"] == record["prompt"]
        assert sample["target_mediated"] == record["target_new"]
        assert sample["target_unmediated"] == record["ground_truth"]
        assert sample["context"] == f"{record['prompt']} {record['target_new']}"
        assert sample["attribute"].endswith(record["target_new"])
        assert sample["entity"] not in sample["attribute"]


# EasyEdit's cases whose new target is their subject ("Florence is a twin city of" ->
# "Florence"), by file; and case 7298 ("The law in Russia declares the language" -> "Russian"),
# whose new target contains it. Each left an empty or broken attribute that stopped training.
TARGET_IS_SUBJECT = {
    "counterfact-train.json": [485, 8594, 18674],
    "counterfact-edit.json": [3154, 3229, 7093, 13400, 17753],
    "counterfact-val.json": [796],
}
TARGET_CONTAINS_SUBJECT = {"counterfact-edit.json": [7298]}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(TARGET_IS_SUBJECT))
def test_easyedit_records_whose_new_target_is_the_subject_are_dropped(name, caplog):
    file = env.shared_data_dir() / "counterfact_easyedit" / name
    raw = {record["case_id"]: record for record in json.loads(file.read_text())}
    dropped = TARGET_IS_SUBJECT[name] + TARGET_CONTAINS_SUBJECT.get(name, [])
    assert all(raw[case]["subject"] in raw[case]["target_new"] for case in dropped)

    with caplog.at_level(logging.WARNING, logger="remedi.data"):
        samples = data.load_dataset("counterfact_easyedit", file=file, prompt_source="rewrite")

    assert not {f"counterfact/{case}" for case in dropped} & set(samples["id"])
    assert f"{len(dropped)} target_new contains the subject" in caplog.text
    assert len(samples) == len(raw) - len(dropped)
    # Every sample left has an attribute after the subject's mention in the prompt.
    for sample in samples:
        assert sample["attribute"] and sample["entity"] not in sample["attribute"]
        assert sample["context"].endswith(f"{sample['attribute']}")
        assert sample["attribute"].endswith(sample["target_mediated"])


@pytest.mark.shared_data
def test_easyedit_records_for_evaluation_hold_what_the_format_has_and_training_samples():
    file = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-edit-1k.json"
    raw = {record["case_id"]: record for record in json.loads(file.read_text())}

    records = data.load_counterfact_easyedit_records(file)
    samples = data.load_counterfact_easyedit(file)

    assert len(records) == len(samples) == len(raw)
    for record, sample in zip(records, samples, strict=True):
        original = raw[record["case_id"]]
        assert data.counterfact_prompt(record) == original["prompt"]
        assert record["paraphrase_prompts"] == [original["rephrase_prompt"]]
        assert record["neighborhood_prompts"] == [original["locality_prompt"]]
        assert record["generation_prompts"] == [original["prompt"]]
        assert record["attribute_prompts"] == []
        # The evaluation's case is the sample training built from the same record.
        rebuilt = data.counterfact_record_sample(record)
        assert {**rebuilt, "source": sample["source"]} == sample


def test_easyedit_drops_unusable_records_with_a_count(tmp_path, caplog):
    records = [
        {"case_id": 1, "prompt": "Kelo Vantri speaks", "subject": "Kelo Vantri"},
        {"case_id": 2, "prompt": "Mira lives in", "subject": "Xavi Bornadel"},
        {"case_id": 3, "prompt": "Mira Talovan speaks", "subject": "Mira Talovan"},
    ]
    for record, new in zip(records, ["Spanish", "Oslo", " "], strict=True):
        record.update(target_new=new, ground_truth="Norwegian")
    file = tmp_path / "easyedit.json"
    file.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING, logger="remedi.data"):
        samples = data.load_dataset("counterfact_easyedit", file=file)
    assert samples["id"] == ["counterfact/1"]
    assert "dropped 2 of 3 records" in caplog.text


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="counterfact_easyedit"):
        data.load_dataset("no_such_dataset")


def test_offline_message_says_where_to_put_the_file(tmp_path):
    unreachable = (tmp_path / "missing" / "counterfact.json").as_uri()
    with pytest.raises(FileNotFoundError) as error:
        data.load_counterfact_records(url=unreachable)
    message = str(error.value)
    assert str(data.counterfact_cache_file()) in message
    assert data.COUNTERFACT_URL in message
    assert "--dataset-file" in message
    assert not data.counterfact_cache_file().exists()


def test_download_checks_size_and_checksum_and_writes_atomically(tmp_path):
    mirror = tmp_path / "mirror.json"
    mirror.write_bytes(COUNTERFACT_FIXTURE.read_bytes())
    size = mirror.stat().st_size
    sha256 = hashlib.sha256(mirror.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "counterfact.json"

    with pytest.raises(OSError, match="expected"):
        data.download_file(mirror.as_uri(), target, expected_size=size + 1)
    assert not target.exists()
    assert not list(target.parent.iterdir())  # no half-written temporary file left
    with pytest.raises(OSError, match="SHA-256"):
        data.download_file(mirror.as_uri(), target, expected_size=size, expected_sha256="0" * 64)
    assert not target.exists()

    data.download_file(mirror.as_uri(), target, expected_size=size, expected_sha256=sha256)
    assert target.read_bytes() == mirror.read_bytes()

    # The loader downloads into the cache once, then reuses it.
    records = data.load_counterfact_records(
        url=mirror.as_uri(), expected_size=size, expected_sha256=sha256
    )
    assert len(records) == 4
    assert data.counterfact_cache_file().read_bytes() == mirror.read_bytes()
    mirror.unlink()
    assert len(data.load_counterfact_records(url=mirror.as_uri())) == 4


def _samples_with_entities(entities: list[str]):
    import datasets

    rows = [
        dict(
            data.counterfact_sample(i, entity, f"{entity} lives in", "Oslo", "Lisbon"),
        )
        for i, entity in enumerate(entities)
    ]
    return datasets.Dataset.from_list(rows, features=data.SAMPLE_FEATURES)


def test_entity_disjoint_split():
    entities = [f"Entity {i % 23}" for i in range(100)]
    samples = _samples_with_entities(entities)
    split = data.entity_disjoint_split(samples, test_size=0.2, seed=3)

    train_entities = set(split["train"]["entity"])
    test_entities = set(split["test"]["entity"])
    assert not train_entities & test_entities
    assert len(split["train"]) + len(split["test"]) == 100
    assert 20 <= len(split["test"]) < 30  # at least the fraction, at most one entity more
    # Seeded: the same seed gives the same split, another seed another one.
    assert data.entity_disjoint_split(samples, 0.2, seed=3)["test"]["id"] == split["test"]["id"]
    assert data.entity_disjoint_split(samples, 0.2, seed=4)["test"]["id"] != split["test"]["id"]

    with pytest.raises(ValueError, match="fewer than 2 entities"):
        data.entity_disjoint_split(_samples_with_entities(["Solo"] * 3), 0.5, seed=0)


def test_select_ids_keeps_the_given_order_and_refuses_unknown_ids():
    samples = _samples_with_entities(["A", "B", "C"])
    assert data.select_ids(samples, ["counterfact/2", "counterfact/0"])["entity"] == ["C", "A"]
    with pytest.raises(KeyError, match="different dataset"):
        data.select_ids(samples, ["counterfact/9"])
