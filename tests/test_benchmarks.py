"""Benchmarks on a tiny random GPT-2: probabilities, edits, generation, and result schemas."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from remedi import benchmarks, data, editors, metrics
from remedi.models import ModelAndTokenizer
from remedi.toy.world import World
from tests.conftest import tiny_gpt2

FIXTURES = Path(__file__).parent / "fixtures"

WORLD = {
    "seed": 0,
    "relations": [
        {
            "relation_id": "P551",
            "name": "residence",
            "train_templates": ["{} lives in the city of", "{} resides in"],
            "heldout_templates": ["The home of {} is in"],
            "values": ["Oslo", "Lisbon", "Paris"],
        },
        {
            "relation_id": "P27",
            "name": "country of citizenship",
            "train_templates": ["{} is a citizen of"],
            "heldout_templates": ["{} holds a passport from"],
            "values": ["France", "Spain"],
        },
        {
            "relation_id": "P1412",
            "name": "language",
            "train_templates": ["{} speaks", "{} writes in"],
            "heldout_templates": [],
            "values": ["French", "Spanish"],
        },
        {
            "relation_id": "P106",
            "name": "occupation",
            "train_templates": ["{} works as a"],
            "heldout_templates": ["The profession of {} is"],
            "values": ["doctor", "painter"],
        },
    ],
    "entities": [
        {
            "name": "Kelo Vantri",
            "facts": {"P551": "Oslo", "P27": "Spain", "P1412": "Spanish", "P106": "doctor"},
            "split": "test",
        },
        {
            "name": "Xavi Bornadel",
            "facts": {"P551": "Lisbon", "P27": "Spain", "P1412": "Spanish", "P106": "painter"},
            "split": "test",
        },
        {
            "name": "Mira Talovan",
            "facts": {"P551": "Lisbon", "P27": "France", "P1412": "French", "P106": "doctor"},
            "split": "train",
        },
        {
            "name": "Danu Revik",
            "facts": {"P551": "Paris", "P27": "France", "P1412": "French", "P106": "painter"},
            "split": "train",
        },
    ],
    "implications": [
        {
            "if_relation": "P27",
            "then_relation": "P1412",
            "mapping": {"France": "French", "Spain": "Spanish"},
        }
    ],
}


@pytest.fixture(scope="module")
def mt(tokenizer) -> ModelAndTokenizer:
    """A tiny random GPT-2 with larger initial weights than the shared fixture's, so that an
    edit at one token visibly moves later predictions (at the default 0.02 it barely does)."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2).requires_grad_(False)
    return ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny-gpt2")


@pytest.fixture(scope="module")
def cases() -> list[benchmarks.EvalCase]:
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    return benchmarks.counterfact_cases(records)


@pytest.fixture()
def remedi(mt, cases) -> benchmarks.RemediMethod:
    # The identity editor, scaled up, moves the entity's hidden state a long way: a visible edit.
    editor = editors.new_editor("identity", mt, layer=0)
    return benchmarks.RemediMethod(mt, editor, cases, alpha=20.0)


@pytest.fixture()
def resources(tmp_path) -> benchmarks.EvalResources:
    for name in ("attribute_snippets.json", "tfidf_vocab.json"):
        shutil.copy(FIXTURES / f"rome_{name}", tmp_path / name)
    shutil.copy(FIXTURES / "rome_idf.npy", tmp_path / "idf.npy")
    (tmp_path / "world.json").write_text(json.dumps(WORLD))
    return benchmarks.load_resources(tmp_path, batch_size=2, max_length=40, seed=3)


def _single_log_prob(mt, prompt: str, target: str) -> float:
    """log p(target | prompt) for one prompt, token by token, without batching."""
    prompt_ids = mt.tokenizer(prompt)["input_ids"]
    target_ids = mt.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(mt.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(
        log_probs[len(prompt_ids) + i - 1, token].item() for i, token in enumerate(target_ids)
    )


# --- cases -------------------------------------------------------------------------------------


def test_cases_join_records_with_samples_in_requested_order(cases):
    assert [case.case_id for case in cases] == [10, 11, 12]
    kelo = cases[0]
    assert kelo.prompt == "Kelo Vantri lives in the city of"
    assert kelo.context == "Kelo Vantri lives in the city of Lisbon"
    assert kelo.attribute == "lives in the city of Lisbon"
    assert kelo.target_new_id == "Q597"
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    subset = benchmarks.counterfact_cases(records, ["counterfact/12", "counterfact/10"])
    assert [case.case_id for case in subset] == [12, 10]
    with pytest.raises(KeyError, match="--dataset-file"):
        benchmarks.counterfact_cases(records, ["counterfact/99"])


# --- probabilities -----------------------------------------------------------------------------


def test_target_log_probs_is_the_whole_target_under_teacher_forcing(mt, cases):
    method = benchmarks.Method()
    queries = [
        (cases[2], cases[2].prompt, "Eiffel painter"),  # a multi-token target
        (cases[0], cases[0].prompt, "Oslo"),
        (cases[1], "Xavi Bornadel, a famous singer from far away, is a citizen of", "Spain"),
    ]
    assert len(mt.tokenizer(" Eiffel painter", add_special_tokens=False)["input_ids"]) > 1
    batched = benchmarks.target_log_probs(mt, method, queries, batch_size=3)
    expected = [_single_log_prob(mt, prompt, target) for _, prompt, target in queries]
    np.testing.assert_allclose(batched, expected, rtol=1e-4, atol=1e-5)
    one_by_one = benchmarks.target_log_probs(mt, method, queries, batch_size=1)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)


def test_mention_token_ranges_find_the_last_mention_or_nothing(tokenizer):
    prompts = ["Kelo Vantri met Kelo Vantri in", "Mira Talovan lives in"]
    inputs = tokenizer(prompts, padding=True, padding_side="left", return_offsets_mapping=True)
    offsets = torch.tensor(inputs["offset_mapping"])
    mask = torch.tensor(inputs["attention_mask"])
    ranges = benchmarks.mention_token_ranges(prompts, ["Kelo Vantri"] * 2, offsets, mask)
    assert ranges[1].tolist() == [0, 0]
    start, end = ranges[0].tolist()
    assert end == start + 1
    # The last token of the second mention, in padded coordinates.
    last_mention_end = len("Kelo Vantri met Kelo Vantri")
    assert offsets[0, start, 1].item() == last_mention_end
    full = benchmarks.mention_token_ranges(prompts, ["Kelo Vantri"] * 2, offsets, mask, False)
    assert full[0, 1].item() == end and full[0, 0].item() < start


def test_remedi_changes_prompts_that_mention_the_entity_and_no_others(mt, cases, remedi):
    kelo = cases[0]
    queries = [
        (kelo, kelo.prompt, "Lisbon"),
        (kelo, "Mira Talovan lives in the city of", "Lisbon"),
    ]
    edited = benchmarks.target_log_probs(mt, remedi, queries, batch_size=2)
    unedited = benchmarks.target_log_probs(mt, benchmarks.Method(), queries, batch_size=2)
    assert abs(edited[0] - unedited[0]) > 1e-3
    assert edited[1] == unedited[1]


def test_probability_benchmarks_score_and_round_trip(mt, cases, remedi, resources):
    result = benchmarks.efficacy(mt, remedi, cases, resources)
    assert result.benchmark == "efficacy"
    assert [case.case_id for case in result.cases] == [10, 11, 12]
    manual = np.mean([c.p_new[0] > c.p_true[0] for c in result.cases])
    assert result.metrics.score.mean == pytest.approx(manual)
    assert result.settings.method_details["layer"] == "0"
    assert benchmarks.ProbabilityResults.from_dict(json.loads(json.dumps(result.to_dict()))) == (
        result
    )

    para = benchmarks.paraphrase(mt, remedi, cases, resources)
    assert [len(c.p_new) for c in para.cases] == [2, 1, 2]


def test_neighborhood_is_measured_with_the_edit_attached(mt, cases, remedi, resources):
    edited = benchmarks.neighborhood(mt, remedi, cases, resources)
    plain = benchmarks.neighborhood(mt, benchmarks.Method(), cases, resources)
    # No neighborhood prompt mentions its case's entity, so REMEDI matches unedited exactly.
    assert edited.prompts_mentioning_entity == 0
    assert [c.p_true for c in edited.cases] == [c.p_true for c in plain.cases]
    assert edited.metrics.score == plain.metrics.score
    # The prefix is prepended to the neighbors' prompts: it can leak, and it is measured.
    prefixed = benchmarks.neighborhood(mt, benchmarks.PrefixMethod(), cases, resources)
    assert prefixed.cases[0].prompts[0] == (
        "Kelo Vantri lives in the city of Lisbon. Mira Talovan lives in the city of"
    )
    assert [c.p_true for c in prefixed.cases] != [c.p_true for c in plain.cases]


# --- baselines ---------------------------------------------------------------------------------


def test_replacements_come_from_the_world_then_snippets_then_attribute_prompts(cases, resources):
    world = resources.world
    from_world = benchmarks.find_replacements(cases, world=world)
    # Xavi and Mira live in Lisbon; Mira and Danu are French.
    assert from_world[10] in {"Xavi Bornadel", "Mira Talovan"}
    assert from_world[11] in {"Mira Talovan", "Danu Revik"}
    # Nobody in the world is an "Eiffel painter": the attribute prompts are read instead.
    assert from_world[12] == "Barack Obama"

    from_prompts = benchmarks.find_replacements(cases)
    # "Xavi Bornadel lives in the city of" matches the case's template; "Nobody knows where" not.
    assert from_prompts[10] == "Xavi Bornadel"
    assert from_prompts[11] == "Danu Revik"
    assert from_prompts[12] == "Barack Obama"

    snippets = metrics.AttributeSnippets(
        [{"relation_id": "P27", "target_id": "Q142", "samples": [{"name": "Jean", "text": "x"}]}]
    )
    assert benchmarks.find_replacements(cases[1:2], snippets=snippets)[11] == "Jean"


def test_replace_and_prefix_rewrite_prompts(cases):
    replace = benchmarks.ReplaceMethod({10: "Xavi Bornadel"})
    assert replace.rewrite(cases[0], "Kelo Vantri resides in") == "Xavi Bornadel resides in"
    assert benchmarks.applicable_cases(replace, cases) == cases[:1]
    prefix = benchmarks.PrefixMethod()
    assert prefix.rewrite(cases[1], "Hi") == "Xavi Bornadel is a citizen of France. Hi"
    assert prefix.visible(cases[1], "Hi") == "Hi"


# --- relation specificity ----------------------------------------------------------------------


def test_relation_specificity_reports_unchanged_and_implied_relations(mt, cases, resources):
    result = benchmarks.relation_specificity(mt, benchmarks.Method(), cases, resources)
    assert result.available
    assert result.unchanged is not None and result.unchanged.mean == 1.0
    by_case = {c.case_id: c for c in result.cases}
    # Xavi Bornadel's edit Spain -> France implies French: the language prompts are apart.
    xavi = by_case[11]
    assert xavi.implied_value == "French"
    assert xavi.implied_prompts == ["Xavi Bornadel speaks", "Xavi Bornadel writes in"]
    assert set(xavi.relations) == {"P551", "P106"}
    assert "P1412" in by_case[10].relations  # a residence edit implies nothing
    assert result.implied_changed is not None and len(result.implied_changed.values) == 1


def test_relation_specificity_is_not_available_without_a_world(mt, cases):
    result = benchmarks.relation_specificity(
        mt, benchmarks.Method(), cases, benchmarks.EvalResources()
    )
    assert not result.available and "world.json" in (result.reason or "")
    round_trip = benchmarks.RelationSpecificityResults.from_dict(result.to_dict())
    assert round_trip == result


# --- generation --------------------------------------------------------------------------------


def test_generation_is_seeded_batched_and_leaves_global_rng_alone(mt, cases):
    method = benchmarks.Method()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    state = torch.random.get_rng_state()
    first = benchmarks.generate_texts(mt, method, queries, max_length=20, seed=1, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = benchmarks.generate_texts(mt, method, queries, max_length=20, seed=1, batch_size=2)
    other = benchmarks.generate_texts(mt, method, queries, max_length=20, seed=2, batch_size=2)
    assert first == again
    assert first != other
    for (_, prompt), text in zip(queries, first, strict=True):
        assert text.startswith(prompt) and len(text) > len(prompt)


def test_greedy_generation_does_not_depend_on_batching(mt, cases):
    method = benchmarks.Method()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    batched = benchmarks.generate_texts(mt, method, queries, max_length=20, top_k=1, batch_size=5)
    single = benchmarks.generate_texts(mt, method, queries, max_length=20, top_k=1, batch_size=1)
    assert batched == single


def test_generation_with_remedi_edits_only_prompts_mentioning_the_entity(mt, cases, remedi):
    kelo = cases[0]
    queries = [(kelo, "Kelo Vantri is known for"), (kelo, "Mira Talovan is known for")]
    edited = benchmarks.generate_texts(mt, remedi, queries, max_length=20, top_k=1)
    plain = benchmarks.generate_texts(mt, benchmarks.Method(), queries, max_length=20, top_k=1)
    assert edited[0] != plain[0]
    assert edited[1] == plain[1]


def test_prefix_generation_text_hides_the_prefix(mt, cases):
    texts = benchmarks.generate_texts(
        mt, benchmarks.PrefixMethod(), [(cases[0], "Kelo Vantri is known for")], max_length=16
    )
    assert texts[0].startswith("Kelo Vantri is known for")
    assert "Lisbon." not in texts[0][: len("Kelo Vantri is known for")]


def test_generation_benchmark_scores_fluency_and_consistency(mt, cases, resources):
    result = benchmarks.generation(mt, benchmarks.Method(), cases, resources)
    assert [len(c.texts) for c in result.cases] == [2, 1, 2]
    for case in result.cases:
        assert case.fluency == pytest.approx(metrics.fluency([case.texts]).mean)
    # Snippets exist only for France (Q142) in the fixture: the other cases are left out.
    assert [c.consistency is not None for c in result.cases] == [False, True, False]
    assert result.consistency is not None and len(result.consistency.values) == 1
    assert "2 of 3 cases have no attribute snippets" in (result.consistency_missing or "")
    assert benchmarks.GenerationResults.from_dict(result.to_dict()) == result


def test_essence_compares_with_unedited_text_about_the_entity(mt, cases, resources):
    result = benchmarks.essence(mt, benchmarks.Method(), cases, resources)
    assert resources.essence_references is not None
    for case, essence_case in zip(cases, result.cases, strict=True):
        assert essence_case.text.startswith(f"{case.entity} is")
        assert essence_case.reference == resources.essence_references[case.case_id]
        # References are sampled apart from the method's texts.
        assert essence_case.text != essence_case.reference
        assert essence_case.similarity is not None and 0.0 <= essence_case.similarity <= 1.0 + 1e-9
    assert result.cases[0].prompt.startswith(benchmarks.ESSENCE_PREFIX)
    assert benchmarks.EssenceResults.from_dict(result.to_dict()) == result


def test_resources_without_rome_files_say_what_is_missing(tmp_path, mt, cases):
    resources = benchmarks.load_resources(tmp_path, max_length=12)
    assert resources.snippets is None and resources.world is None
    assert "attribute_snippets.json not found" in (resources.missing or "")
    result = benchmarks.essence(mt, benchmarks.Method(), cases[:1], resources)
    assert result.similarity is None and result.similarity_missing == resources.missing
    assert not math.isnan(result.fluency.mean)


def test_worlds_load_from_their_json(resources):
    assert isinstance(resources.world, World)
    assert resources.world.relation("P27").train_templates == ("{} is a citizen of",)


def test_results_know_which_editor_weights_made_them(mt, cases):
    editor = editors.new_editor("linear", mt, layer=0)
    first = benchmarks.RemediMethod(mt, editor, cases[:1]).details()["weights_sha256"]
    assert benchmarks.editor_fingerprint(editor) == first
    with torch.no_grad():
        editor.w.bias.add_(1.0)  # retrained in place: the results must not be reused
    assert benchmarks.editor_fingerprint(editor) != first
