"""The McRae and WinoVenti loaders: the real files, the reference's sample construction, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from remedi import data, env
from remedi.data import mcrae, winoventi

MCRAE_HEADER = ["Concept", "Feature", "WB_Label", "Prod_Freq"]


def _write_norms(path: Path, rows: list[list[str]], header: list[str] = MCRAE_HEADER) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.shared_data
def test_mcrae_real_file_keeps_the_normed_features_and_builds_co_occurrence_samples():
    file = env.shared_data_dir() / "mcrae" / mcrae.MCRAE_FILE_NAME
    norms = mcrae.read_mcrae_norms(file)
    assert norms.rows == 7259
    assert len(norms.concepts) == 541
    assert len(norms.features) == 2479
    # 50 rows are features the reference leaves out; 2 repeat a concept's feature once cleaned.
    assert sum(norms.dropped.values()) == 52
    samples = data.load_dataset("mcrae", file=file)
    assert len(samples) == 10449
    for sample in samples.select(range(50)):
        assert sample["co_prob"] >= mcrae.MCRAE_MIN_CO_PROB
        assert sample["prompt"].split()[1] == sample["entity"].split()[0]
        assert sample["context"].endswith(sample["attribute"] + ".")
        assert sample["target_unmediated"] is None
        # The concept has neither feature; the prompt feature co-occurs with the context's.
        concept_features = norms.probabilities[sample["concept"]]
        assert sample["context_feature"] not in concept_features
        assert sample["prompt_feature"] not in concept_features
        co_features = {entry["feature"] for entry in sample["co_features"]}
        assert sample["prompt_feature"] in co_features
        assert len(sample["unrelated_features"]) == mcrae.MCRAE_UNRELATED_FEATURES
        assert not co_features & {entry["feature"] for entry in sample["unrelated_features"]}


def test_mcrae_samples_follow_the_reference_construction(tmp_path):
    rows = [
        ["banjo", "has_strings", "x", "24"],
        ["banjo", "a_musical_instrument", "x", "30"],
        ["guitar", "has_strings", "x", "30"],
        ["guitar", "a_musical_instrument", "x", "27"],
        ["guitar", "bought/sold_in_stores", "x", "5"],
        ["apple", "is_red", "x", "20"],
        ["apple", "beh_-_grows_on_trees", "x", "12"],
    ]
    norms = mcrae.read_mcrae_norms(_write_norms(tmp_path / "norms.txt", rows))
    assert norms.dropped == {"feature makes no statement (bought/sold, eg -, killed, king of)": 1}
    assert norms.probabilities["apple"] == {"is red": 20 / 30, "grows on trees": 12 / 30}
    co = mcrae.co_occurrence(norms)
    # Mean over concepts having "has strings" of p(strings|c) p(instrument|c).
    expected = (24 / 30 * 30 / 30 + 30 / 30 * 27 / 30) / 2
    assert co["has strings"]["a musical instrument"] == pytest.approx(expected)
    samples = mcrae.mcrae_samples(norms, seed=0)
    by_pair = {(s["context_feature"], s["prompt_feature"]): s for s in samples}
    sample = by_pair[("has strings", "a musical instrument")]
    assert sample["entity"] == "apple"  # the only concept with neither feature
    assert sample["context"] == "An apple has strings."
    assert sample["prompt"] == "An apple is a"
    assert sample["target_mediated"] == "musical instrument"
    assert sample["attribute"] == "has strings"


def test_articles_come_from_pronunciation_not_spelling():
    assert mcrae.article("hour") == "an"
    assert mcrae.article("uniform") == "a"
    assert mcrae.article("apple") == "an"
    assert mcrae.article("qzxv-not-a-word") == "a"


def test_mcrae_file_without_a_column_names_file_row_and_fix(tmp_path):
    file = _write_norms(tmp_path / "bad.txt", [["banjo", "x", "3"]], ["Concept", "WB_Label", "X"])
    with pytest.raises(data.DatasetFormatError) as caught:
        mcrae.read_mcrae_norms(file)
    message = str(caught.value)
    assert str(file) in message and "row 1 (header)" in message
    assert "Feature" in message and "Prod_Freq" in message and "tab-separated" in message


def test_mcrae_row_with_a_bad_count_names_its_row(tmp_path):
    file = _write_norms(
        tmp_path / "bad.txt", [["banjo", "has_strings", "x", "24"], ["a", "b", "x", "?"]]
    )
    with pytest.raises(data.DatasetFormatError, match=r"row 3: Prod_Freq is '\?'"):
        mcrae.read_mcrae_norms(file)


@pytest.mark.shared_data
def test_winoventi_real_file_reads_as_the_reference_does():
    samples = data.load_dataset("winoventi")
    assert len(samples) == 2632
    first = samples[0]
    assert first["entity"] == "syrup"
    assert first["prompt"] == "The syrup is"
    assert first["context"] == "Margaret smelled her bottle of maple syrup and it was sweet"
    assert first["attribute"] == "and it was sweet"
    assert (first["target_mediated"], first["target_unmediated"]) == ("edible", "malodorous")
    for sample in samples.select(range(100)):
        assert sample["entity"] in sample["prompt"] and sample["entity"] in sample["context"]
        assert "[MASK]" not in sample["prompt"]


def test_winoventi_row_without_mask_names_file_row_and_fix(tmp_path):
    header = "\t".join(
        ["Word", "Associative Bias", "Alternative", *winoventi.WINOVENTI_COLUMNS[1:]]
    )
    good = "\t".join(
        [
            "syrup",
            "edible",
            "x",
            "sweet",
            "bitter",
            "It was sweet syrup. The syrup is [MASK].",
            "edible",
            "bad",
            "1",
        ]
    )
    bad = good.replace("[MASK]", "tasty")
    file = tmp_path / "wv.tsv"
    file.write_text("\n".join([header + "\ttest_type", good, bad]) + "\n")
    with pytest.raises(data.DatasetFormatError) as caught:
        winoventi.load_winoventi(file)
    message = str(caught.value)
    assert str(file) in message and "row 3" in message and "[MASK]" in message
    assert "fix or delete the row" in message
