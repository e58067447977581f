"""Metrics on hand-computed examples."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from remedi import metrics

FIXTURES = Path(__file__).parent / "fixtures"


# --- efficacy / neighborhood -------------------------------------------------------------------


def test_efficacy_one_probability_per_case():
    result = metrics.efficacy(p_new=[0.5, 0.2, 0.3], p_true=[0.1, 0.4, 0.3])
    # Case 3 is a tie, which is not a success.
    assert result.score.mean == pytest.approx(1 / 3)
    assert result.score.values == [1.0, 0.0, 0.0]
    assert result.magnitude.mean == pytest.approx((0.4 - 0.2 + 0.0) / 3)


def test_efficacy_averages_within_case_then_across_cases():
    result = metrics.efficacy(p_new=[[0.6, 0.1], [0.3]], p_true=[[0.2, 0.2], [0.1]])
    assert result.score.values == [0.5, 1.0]
    assert result.score.mean == pytest.approx(0.75)
    assert result.magnitude.values == pytest.approx([0.15, 0.2])
    assert result.magnitude.mean == pytest.approx(0.175)
    assert result.score.std == pytest.approx(0.25)


def test_efficacy_accepts_numpy_arrays():
    result = metrics.efficacy(np.array([0.9, 0.1]), np.array([0.05, 0.5]))
    assert result.score.mean == pytest.approx(0.5)


def test_neighborhood_counts_true_beating_new():
    result = metrics.neighborhood(p_true=[0.7, 0.2, 0.5, 0.4], p_new=[0.1, 0.3, 0.4, 0.6])
    assert result.score.mean == pytest.approx(0.5)
    assert result.magnitude.mean == pytest.approx((0.6 - 0.1 + 0.1 - 0.2) / 4)


def test_efficacy_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="3 cases on one side and 2"):
        metrics.efficacy([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="case 1 has 2 probabilities"):
        metrics.efficacy([[0.1], [0.2, 0.3]], [[0.1], [0.2]])


def test_metric_round_trips_through_json():
    metric = metrics.Metric.aggregate([1.0, 0.0, 1.0, 1.0])
    assert metric.mean == 0.75
    assert metrics.Metric.from_json(metric.to_json()) == metric
    result = metrics.efficacy([0.5], [0.1])
    assert metrics.ScoreAndMagnitude.from_dict(result.to_dict()) == result


def test_metric_of_nothing_is_nan():
    assert math.isnan(metrics.Metric.aggregate([]).mean)
    assert math.isnan(metrics.share([]))
    assert metrics.share([True, False, True, True]) == 0.75


# --- fluency -----------------------------------------------------------------------------------


def test_word_tokenize_matches_nltk_on_sentences_and_abbreviations():
    # The same tokens nltk.word_tokenize gives with its punkt model.
    assert metrics.word_tokenize("Mr. Smith lives in Paris. He doesn't work.") == [
        "Mr.",
        "Smith",
        "lives",
        "in",
        "Paris",
        ".",
        "He",
        "does",
        "n't",
        "work",
        ".",
    ]
    assert metrics.word_tokenize("It cost $3.50, she said!") == [
        "It",
        "cost",
        "$",
        "3.50",
        ",",
        "she",
        "said",
        "!",
    ]


def test_n_gram_entropy_of_known_strings():
    tokens = ["a", "b", "a", "b"]
    # Bigrams (a,b) x2, (b,a) x1.
    expected_bigram = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert metrics.n_gram_entropy(tokens, 2) == pytest.approx(expected_bigram)
    assert metrics.n_gram_entropy(tokens, 3) == pytest.approx(1.0)
    assert metrics.n_gram_entropy(tokens, 5) == 0.0


def test_weighted_n_gram_entropy_is_roms_weighted_mean():
    # 6 distinct words: 5 distinct bigrams, 4 distinct trigrams.
    value = metrics.weighted_n_gram_entropy("the cat sat on a mat")
    assert value == pytest.approx((2 / 3 * math.log2(5) + 4 / 3 * math.log2(4)) / 2)
    assert metrics.weighted_n_gram_entropy("the the the the the") == 0.0
    assert metrics.weighted_n_gram_entropy("a b a b") == pytest.approx(
        (2 / 3 * 0.9182958340544896 + 4 / 3 * 1.0) / 2
    )


def test_fluency_averages_texts_within_and_across_cases():
    result = metrics.fluency([["the the the the", "the cat sat on a mat"], "a b a b"])
    first = (0.0 + (2 / 3 * math.log2(5) + 4 / 3 * 2) / 2) / 2
    second = (2 / 3 * 0.9182958340544896 + 4 / 3) / 2
    assert result.values == pytest.approx([first, second])
    assert result.mean == pytest.approx((first + second) / 2)


def test_repetitive_text_is_less_fluent_than_varied_text():
    varied = "Paris is the capital of France. It lies on the Seine and has many museums."
    repetitive = "Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris"
    assert metrics.weighted_n_gram_entropy(varied) > metrics.weighted_n_gram_entropy(repetitive)


# --- TF-IDF ------------------------------------------------------------------------------------


def test_tfidf_of_hand_made_vocabulary():
    vectorizer = metrics.TfidfVectorizer({"cat": 0, "dog": 1, "sat": 2}, idf=[1.0, 2.0, 1.0])
    vectors = vectorizer.transform(["The cat SAT a", "dog cat"])
    # "the" and "a" are out of vocabulary / too short; counts are case-insensitive.
    np.testing.assert_allclose(vectors[0], [1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)])
    np.testing.assert_allclose(vectors[1], np.array([1.0, 2.0, 0.0]) / math.sqrt(5))
    assert vectorizer.similarity("The cat SAT", "dog cat") == pytest.approx(1 / math.sqrt(10))
    # Raw counts, not binary: a repeated word weighs more.
    np.testing.assert_allclose(vectorizer.transform(["cat cat dog"])[0], [1, 1, 0] / np.sqrt(2))


def test_tfidf_identical_texts_have_similarity_one_and_disjoint_zero():
    vectorizer = metrics.TfidfVectorizer.from_files(
        FIXTURES / "rome_tfidf_vocab.json", FIXTURES / "rome_idf.npy"
    )
    text = "Jean Renoir was a French film director, born in Paris."
    assert vectorizer.similarity(text, text) == pytest.approx(1.0)
    assert vectorizer.similarity(text, text.upper()) == pytest.approx(1.0)
    assert vectorizer.similarity("French film", "English writer") == 0.0
    assert vectorizer.similarity("zzz qqq", text) == 0.0


def test_tfidf_similarity_joins_texts_per_case():
    vectorizer = metrics.TfidfVectorizer({"cat": 0, "dog": 1}, idf=[1.0, 1.0])
    result = metrics.tfidf_similarity([["cat", "dog"], "cat"], [["dog cat"], ["dog"]], vectorizer)
    assert result.values == pytest.approx([1.0, 0.0])


def test_tfidf_vocabulary_larger_than_idf_fails_clearly():
    with pytest.raises(ValueError, match="do not match"):
        metrics.TfidfVectorizer({"cat": 0, "dog": 5}, idf=[1.0, 1.0])


def test_tfidf_missing_files_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("rome.baulab.info/data/dsets/idf.npy")):
        metrics.TfidfVectorizer.from_files(FIXTURES / "rome_tfidf_vocab.json", tmp_path / "idf.npy")


# --- attribute snippets ------------------------------------------------------------------------


def test_attribute_snippets_group_by_relation_and_target():
    snippets = metrics.AttributeSnippets.from_file(FIXTURES / "rome_attribute_snippets.json")
    french = snippets["P103"]["Q150"]
    # Records with the same key are merged, in file order.
    assert [s.name for s in french] == ["Jean Renoir", "Danielle Darrieux", "Edith Piaf"]
    assert snippets.texts("P27", "Q142") == [
        "Jean Renoir was a citizen of France, where he directed films for most of his career."
    ]
    assert snippets.snippets("P103", "Q0") == []
    assert snippets["P999"] == {}
    assert sorted(snippets) == ["P103", "P27"]


def test_attribute_snippets_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("attribute_snippets.json not found")):
        metrics.AttributeSnippets.from_file(tmp_path / "attribute_snippets.json")


def test_attribute_snippets_malformed_record_is_named(tmp_path):
    path = tmp_path / "attribute_snippets.json"
    good = {"relation_id": "P1", "target_id": "Q1", "samples": []}
    path.write_text(json.dumps([good, {"relation_id": "P1", "samples": []}]))
    with pytest.raises(ValueError, match="record 1 is not in ROME's attribute snippets format"):
        metrics.AttributeSnippets.from_file(path)
