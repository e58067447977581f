"""The evaluation package on a tiny random GPT-2: probabilities, edits, generation, and result schemas."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from remedi import data, editors, errors, evaluation, metrics
from remedi.methods import base, baselines, registry
from remedi.methods import remedi as remedi_method
from remedi.models import ModelAndTokenizer
from remedi.toy.world import World
from tests.conftest import float64_copy, weighty_gpt2
from tests.model_fixtures import tiny_llama
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

FIXTURES = Path(__file__).parent / "fixtures"
PREFIX = evaluation.TextMethod(registry.METHODS["prefix"])

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
    return weighty_gpt2(tokenizer)


@pytest.fixture(scope="module")
def mt64(mt) -> ModelAndTokenizer:
    """The same tiny model in float64: greedy decoding batched vs. alone then agrees on any CPU
    (in float32 a near-tie between two tokens can break differently with the batch's padding)."""
    return float64_copy(mt, "tiny-gpt2-float64")


@pytest.fixture(scope="module")
def cases() -> list[evaluation.EvalCase]:
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    return evaluation.counterfact_cases(records)


@pytest.fixture()
def remedi(mt, cases) -> evaluation.RemediMethod:
    # The identity editor, scaled up, moves the entity's hidden state a long way: a visible edit.
    editor = editors.new_editor("identity", mt, layer=0)
    return evaluation.RemediMethod(mt, editor, cases, alpha=20.0)


@pytest.fixture()
def resources(tmp_path) -> evaluation.EvalResources:
    for name in ("attribute_snippets.json", "tfidf_vocab.json"):
        shutil.copy(FIXTURES / f"rome_{name}", tmp_path / name)
    shutil.copy(FIXTURES / "rome_idf.npy", tmp_path / "idf.npy")
    (tmp_path / "world.json").write_text(json.dumps(WORLD))
    return evaluation.load_resources(tmp_path, batch_size=2, max_length=40, seed=3)


# --- cases -------------------------------------------------------------------------------------


def test_cases_join_records_with_samples_in_requested_order(cases):
    assert [case.case_id for case in cases] == [10, 11, 12]
    kelo = cases[0]
    # The sample's prompt is the first paraphrase (the reference's choice); the context is the
    # rewrite prompt with the new value.
    assert kelo.prompt == "Kelo Vantri resides in"
    assert kelo.rewrite_prompt == "Kelo Vantri lives in the city of"
    assert kelo.context == "Kelo Vantri lives in the city of Lisbon"
    assert kelo.attribute == "lives in the city of Lisbon"
    assert kelo.target_new_id == "Q597"
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    subset = evaluation.counterfact_cases(records, ["counterfact/12", "counterfact/10"])
    assert [case.case_id for case in subset] == [12, 10]
    with pytest.raises(KeyError, match="--dataset-file"):
        evaluation.counterfact_cases(records, ["counterfact/99"])
    rewrite = evaluation.counterfact_cases(records, prompt_source="rewrite")
    assert rewrite[0].prompt == rewrite[0].rewrite_prompt == "Kelo Vantri lives in the city of"
    assert rewrite[0].context == kelo.context


def test_first_cases_take_the_first_n_rewrite_prompts_and_refuse_none():
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    everything = evaluation.counterfact_cases(records, prompt_source="rewrite")
    first = evaluation.first_cases(records, 2, "to trace")
    assert [case.case_id for case in first] == [case.case_id for case in everything[:2]]
    assert first[0].prompt == first[0].rewrite_prompt
    assert len(evaluation.first_cases(records, None, "to trace")) == len(everything)
    with pytest.raises(errors.UsageError, match=r"no cases to trace: .* -n is 0"):
        evaluation.first_cases(records, 0, "to trace")


# --- probabilities -----------------------------------------------------------------------------


def test_target_log_probs_is_the_whole_target_under_teacher_forcing(mt64, cases):
    method = evaluation.Method()
    queries = [
        (cases[2], cases[2].prompt, "Eiffel painter"),  # a multi-token target
        (cases[0], cases[0].prompt, "Oslo"),
        (cases[1], "Xavi Bornadel, a famous singer from far away, is a citizen of", "Spain"),
    ]
    assert len(mt64.tokenizer(" Eiffel painter", add_special_tokens=False)["input_ids"]) > 1
    batched = evaluation.target_log_probs(mt64, method, queries, batch_size=3, scoring="sum")
    expected = [sum(_token_log_probs(mt64, prompt, target)) for _, prompt, target in queries]
    # Batched and padded vs. one sequence agree to rounding.
    assert_equal_in_exact_arithmetic(batched, expected, precision_of(mt64))
    one_by_one = evaluation.target_log_probs(mt64, method, queries, batch_size=1, scoring="sum")
    assert_equal_in_exact_arithmetic(batched, one_by_one, precision_of(mt64))


def test_mention_token_ranges_find_the_last_mention_or_nothing(tokenizer):
    prompts = ["Kelo Vantri met Kelo Vantri in", "Mira Talovan lives in"]
    inputs = tokenizer(prompts, padding=True, padding_side="left", return_offsets_mapping=True)
    offsets = torch.tensor(inputs["offset_mapping"])
    mask = torch.tensor(inputs["attention_mask"])
    ranges = evaluation.mention_token_ranges(prompts, ["Kelo Vantri"] * 2, offsets, mask)
    assert ranges[1].tolist() == [0, 0]
    start, end = ranges[0].tolist()
    assert end == start + 1
    # The last token of the second mention, in padded coordinates.
    last_mention_end = len("Kelo Vantri met Kelo Vantri")
    assert offsets[0, start, 1].item() == last_mention_end
    full = evaluation.mention_token_ranges(prompts, ["Kelo Vantri"] * 2, offsets, mask, False)
    assert full[0, 1].item() == end and full[0, 0].item() < start


def test_remedi_changes_prompts_that_mention_the_entity_and_no_others(mt, cases, remedi):
    kelo = cases[0]
    queries = [
        (kelo, kelo.prompt, "Lisbon"),
        (kelo, "Mira Talovan lives in the city of", "Lisbon"),
    ]
    edited = evaluation.target_log_probs(mt, remedi, queries, batch_size=2)
    unedited = evaluation.target_log_probs(mt, evaluation.Method(), queries, batch_size=2)
    assert abs(edited[0] - unedited[0]) > 1e-3
    # Exact: the same batch, and the hook adds nothing outside the mention.
    assert edited[1] == unedited[1]


def test_probability_benchmarks_score_and_round_trip(mt, cases, remedi, resources):
    result = evaluation.efficacy(mt, remedi, cases, resources)
    assert result.benchmark == "efficacy"
    assert [case.case_id for case in result.cases] == [10, 11, 12]
    manual = np.mean([c.p_new[0] > c.p_true[0] for c in result.cases])
    assert result.metrics.score.mean == pytest.approx(manual)
    assert result.settings.method_details["layer"] == "0"
    assert evaluation.ProbabilityResults.from_dict(json.loads(json.dumps(result.to_dict()))) == (
        result
    )

    para = evaluation.paraphrase(mt, remedi, cases, resources)
    assert [len(c.p_new) for c in para.cases] == [2, 1, 2]


def test_neighborhood_is_measured_with_the_edit_attached(mt, cases, remedi, resources):
    edited = evaluation.neighborhood(mt, remedi, cases, resources)
    plain = evaluation.neighborhood(mt, evaluation.Method(), cases, resources)
    # No neighborhood prompt mentions its case's entity, so REMEDI matches unedited exactly.
    assert edited.prompts_mentioning_entity == 0
    assert [c.p_true for c in edited.cases] == [c.p_true for c in plain.cases]
    assert edited.metrics.score == plain.metrics.score
    # The prefix is prepended to the neighbors' prompts: it can leak, and it is measured.
    prefixed = evaluation.neighborhood(mt, PREFIX, cases, resources)
    assert prefixed.cases[0].prompts[0] == (
        "Kelo Vantri lives in the city of Lisbon. Mira Talovan lives in the city of"
    )
    assert [c.p_true for c in prefixed.cases] != [c.p_true for c in plain.cases]


# --- baselines ---------------------------------------------------------------------------------


def test_replacements_come_from_the_world_then_snippets_then_attribute_prompts(cases, resources):
    world = resources.world
    from_world = evaluation.find_replacements(cases, facts=world.subjects_by_fact())
    # Xavi and Mira live in Lisbon; Mira and Danu are French.
    assert from_world[10] in {"Xavi Bornadel", "Mira Talovan"}
    assert from_world[11] in {"Mira Talovan", "Danu Revik"}
    # Nobody in the world is an "Eiffel painter": the attribute prompts are read instead.
    assert from_world[12] == "Barack Obama"

    from_prompts = evaluation.find_replacements(cases)
    # "Xavi Bornadel lives in the city of" matches the case's template; "Nobody knows where" not.
    assert from_prompts[10] == "Xavi Bornadel"
    assert from_prompts[11] == "Danu Revik"
    assert from_prompts[12] == "Barack Obama"

    snippets = metrics.AttributeSnippets(
        [{"relation_id": "P27", "target_id": "Q142", "samples": [{"name": "Jean", "text": "x"}]}]
    )
    assert evaluation.find_replacements(cases[1:2], snippets=snippets)[11] == "Jean"


def test_replace_and_prefix_rewrite_prompts(cases):
    replace = evaluation.TextMethod(registry.METHODS["replace"], {10: "Xavi Bornadel"})
    assert replace.rewrite(cases[0], "Kelo Vantri resides in") == "Xavi Bornadel resides in"
    assert evaluation.applicable_cases(replace, cases) == cases[:1]
    with pytest.raises(errors.UsageError, match="no replacement entity for 'Xavi Bornadel'"):
        replace.rewrite(cases[1], "Xavi Bornadel is a citizen of")
    prefix = PREFIX
    assert prefix.rewrite(cases[1], "Hi") == "Xavi Bornadel is a citizen of France. Hi"
    assert prefix.visible(cases[1], "Hi") == "Hi"


def test_a_method_that_applies_to_no_case_gets_empty_results(mt, cases, resources):
    # e.g. data without any replacement entity
    nothing = evaluation.TextMethod(registry.METHODS["replace"], {})
    assert evaluation.target_log_probs(mt, nothing, []).shape == (0,)
    assert evaluation.next_token_predictions(mt, nothing, []).shape == (0,)
    assert evaluation.generate_texts(mt, nothing, []) == []
    for benchmark in ("efficacy", "paraphrase", "neighborhood", "generation"):
        result = evaluation.BENCHMARKS[benchmark](mt, nothing, cases, resources)
        assert result.cases == []
    notes = evaluation.unscored_method_notes([nothing, PREFIX], cases)
    assert len(notes) == 1 and notes[0].startswith("Replace: nothing to score")


# --- relation specificity ----------------------------------------------------------------------


def test_relation_specificity_reports_unchanged_and_implied_relations(mt, cases, resources):
    result = evaluation.relation_specificity(mt, evaluation.Method(), cases, resources)
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


def test_relation_specificity_without_a_world_asks_the_datasets_templates(mt, cases):
    # Real CounterFact has no world.json: the cases' relation templates filled with the subject
    # (tests/test_relation_term.py checks them by hand).
    result = evaluation.relation_specificity(
        mt, evaluation.Method(), cases, evaluation.EvalResources()
    )
    assert result.available and result.reason is None
    assert [len(case.prompts) for case in result.cases] == [2, 2, 2]
    round_trip = evaluation.RelationSpecificityResults.from_dict(result.to_dict())
    assert round_trip == result


# --- generation --------------------------------------------------------------------------------


def test_generation_is_seeded_batched_and_leaves_global_rng_alone(mt, cases):
    method = evaluation.Method()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    state = torch.random.get_rng_state()
    first = evaluation.generate_texts(mt, method, queries, max_length=20, seed=1, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = evaluation.generate_texts(mt, method, queries, max_length=20, seed=1, batch_size=2)
    other = evaluation.generate_texts(mt, method, queries, max_length=20, seed=2, batch_size=2)
    assert first == again
    assert first != other
    for (_, prompt), text in zip(queries, first, strict=True):
        assert text.startswith(prompt) and len(text) > len(prompt)


def test_greedy_generation_does_not_depend_on_batching(mt64, cases):
    method = evaluation.Method()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    batched = evaluation.generate_texts(mt64, method, queries, 20, top_k=1, batch_size=5)
    single = evaluation.generate_texts(mt64, method, queries, 20, top_k=1, batch_size=1)
    assert batched == single


def test_sampled_texts_do_not_depend_on_batching(mt64, cases):
    # Each text has its own seed. float64: a near-tie between two of the top k tokens cannot
    # break differently with the batch's padding.
    method = evaluation.Method()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    batched = evaluation.generate_texts(mt64, method, queries, 20, top_k=5, seed=4, batch_size=5)
    single = evaluation.generate_texts(mt64, method, queries, 20, top_k=5, seed=4, batch_size=1)
    greedy = evaluation.generate_texts(mt64, method, queries, 20, top_k=1, batch_size=5)
    assert batched == single
    assert batched != greedy


def test_the_top_k_sampler_draws_the_k_best_tokens_with_their_softmax_probabilities():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0, -4.0, 0.0])
    top_k, draws = 3, 6000
    sampler = evaluation.TopKSampler(top_k, seeds=range(draws))
    scores = sampler(torch.zeros(draws, 1, dtype=torch.long), logits.repeat(draws, 1))
    # Exactly one possible token per row: greedy decoding picks the sampled one.
    assert torch.equal(torch.isfinite(scores).sum(dim=-1), torch.ones(draws, dtype=torch.long))
    counts = torch.bincount(scores.argmax(dim=-1), minlength=len(logits)).double()
    expected = torch.zeros(len(logits), dtype=torch.float64)
    best = logits.topk(top_k).indices
    expected[best] = torch.softmax(logits[best].double(), dim=-1)
    assert counts[expected == 0].sum() == 0
    # Binomial counts: within 4 standard deviations of draws * p (seeded, so deterministic).
    spread = 4 * (draws * expected * (1 - expected)).sqrt()
    assert ((counts - draws * expected).abs() <= spread).all()
    # The same seeds draw the same tokens, on any batch.
    again = evaluation.TopKSampler(top_k, seeds=range(draws))
    assert torch.equal(again(None, logits.repeat(draws, 1)), scores)


def test_generation_with_remedi_edits_only_prompts_mentioning_the_entity(mt, cases, remedi):
    kelo = cases[0]
    queries = [(kelo, "Kelo Vantri is known for"), (kelo, "Mira Talovan is known for")]
    edited = evaluation.generate_texts(mt, remedi, queries, max_length=20, top_k=1)
    plain = evaluation.generate_texts(mt, evaluation.Method(), queries, max_length=20, top_k=1)
    assert edited[0] != plain[0]
    assert edited[1] == plain[1]


def test_prefix_generation_text_hides_the_prefix(mt, cases):
    prompt = "Kelo Vantri is known for"
    shown = evaluation.generate_texts(mt, PREFIX, [(cases[0], prompt)], max_length=16, top_k=1)[0]
    # The same greedy continuation, generated from the whole prefixed text by the plain model:
    # the prefix conditions the continuation but is not part of the text that is scored.
    prefixed = baselines.prefix(prompt, baselines.TextEdit(cases[0].entity, cases[0].context))
    extra = len(mt.tokenizer(prefixed)["input_ids"]) - len(mt.tokenizer(prompt)["input_ids"])
    full = evaluation.generate_texts(
        mt, evaluation.Method(), [(cases[0], prefixed)], max_length=16 + extra, top_k=1
    )[0]
    assert full.startswith(prefixed)
    assert shown == prompt + full[len(prefixed) :]
    assert len(shown) > len(prompt)


def test_generation_benchmark_scores_fluency_and_consistency(mt, cases, resources):
    result = evaluation.editing.generation.generation(mt, evaluation.Method(), cases, resources)
    assert [len(c.texts) for c in result.cases] == [2, 1, 2]
    for case in result.cases:
        assert case.fluency == pytest.approx(metrics.fluency([case.texts]).mean)
    # Snippets exist only for France (Q142) in the fixture: the other cases are left out.
    assert [c.consistency is not None for c in result.cases] == [False, True, False]
    assert result.consistency is not None and len(result.consistency.values) == 1
    assert "2 of 3 cases have no attribute snippets" in (result.consistency_missing or "")
    assert evaluation.GenerationResults.from_dict(result.to_dict()) == result


def test_essence_compares_with_unedited_text_about_the_entity(mt, cases, resources):
    result = evaluation.essence(mt, evaluation.Method(), cases, resources)
    assert resources.essence_references is not None
    for case, essence_case in zip(cases, result.cases, strict=True):
        assert essence_case.text.startswith(f"{case.entity} is")
        assert essence_case.reference == resources.essence_references[case.case_id]
        # References are sampled apart from the method's texts.
        assert essence_case.text != essence_case.reference
        assert resources.vectorizer is not None
        expected = resources.vectorizer.similarity(essence_case.text, essence_case.reference)
        assert essence_case.similarity == expected
        assert essence_case.fluency == metrics.weighted_n_gram_entropy(essence_case.text)
    assert result.cases[0].prompt.startswith(evaluation.editing.generation.ESSENCE_PREFIX)
    assert evaluation.EssenceResults.from_dict(result.to_dict()) == result


def test_resources_without_rome_files_say_what_is_missing(tmp_path, mt, cases):
    resources = evaluation.load_resources(tmp_path, max_length=12)
    assert resources.snippets is None and resources.world is None
    assert "attribute_snippets.json not found" in (resources.missing or "")
    result = evaluation.essence(mt, evaluation.Method(), cases[:1], resources)
    assert result.similarity is None and result.similarity_missing == resources.missing
    texts = [case.text for case in result.cases]
    assert result.fluency.mean == pytest.approx(
        np.mean([metrics.weighted_n_gram_entropy(text) for text in texts])
    )
    assert all(text.startswith(f"{cases[0].entity} is") for text in texts)


def test_worlds_load_from_their_json(resources):
    assert isinstance(resources.world, World)
    assert resources.world.relation("P27").train_templates == ("{} is a citizen of",)


def test_results_know_which_editor_weights_made_them(mt, cases):
    editor = editors.new_editor("linear", mt, layer=0)
    first = evaluation.RemediMethod(mt, editor, cases[:1]).details()["weights_sha256"]
    assert remedi_method.editor_fingerprint(editor) == first
    with torch.no_grad():
        editor.w.bias.add_(1.0)  # retrained in place: the results must not be reused
    assert remedi_method.editor_fingerprint(editor) != first


# --- relation specificity under an edit that changes predictions ---------------------------------


def _top1(mt, method, case, prompt: str) -> int:
    """The top-1 next token after one prompt, the method's edit attached, without batching."""
    inputs = mt.tokenizer([prompt], return_tensors="pt", return_offsets_mapping=True)
    offsets = inputs.pop("offset_mapping")
    with torch.no_grad(), method.edit(mt, [case], [prompt], offsets, inputs["attention_mask"]):
        logits = mt.model(**inputs).logits
    return int(logits[0, -1].argmax())


def test_relation_specificity_counts_the_predictions_an_edit_changes(mt, cases, remedi, resources):
    result = evaluation.relation_specificity(mt, remedi, cases, resources)
    expected_unchanged, expected_implied = [], []
    for case_result, case in zip(result.cases, cases, strict=True):
        flags = [
            _top1(mt, remedi, case, prompt) == _top1(mt, evaluation.Method(), case, prompt)
            for prompt in case_result.prompts
        ]
        assert case_result.unchanged == flags
        expected_unchanged.append(float(np.mean(flags)))
        if case_result.implied_prompts:
            implied_id = mt.tokenizer(" " + (case_result.implied_value or ""))["input_ids"][0]
            hits = [
                _top1(mt, remedi, case, prompt) == implied_id
                for prompt in case_result.implied_prompts
            ]
            assert case_result.implied_hits == hits
            expected_implied.append(float(np.mean(hits)))
    assert result.unchanged is not None and result.implied_changed is not None
    assert result.unchanged.values == pytest.approx(expected_unchanged)
    assert result.implied_changed.values == pytest.approx(expected_implied)
    # The scaled identity edit moves the tiny model's predictions: the benchmark must see it.
    assert result.unchanged.mean < 1.0


# --- target scoring ----------------------------------------------------------------------------


def _token_log_probs(mt, prompt: str, target: str) -> list[float]:
    """log p of each target token after ``prompt``, one sequence at a time, in float64."""
    prompt_ids = mt.tokenizer(prompt)["input_ids"]
    target_ids = mt.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(mt.model(input_ids=ids).logits[0].double(), dim=-1)
    return [log_probs[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(target_ids)]


@pytest.mark.parametrize("scoring", evaluation.TARGET_SCORINGS)
def test_each_target_scoring_matches_its_definition(mt, cases, scoring):
    queries = [(cases[2], cases[2].prompt, "Eiffel painter"), (cases[0], cases[0].prompt, "Oslo")]
    scores = evaluation.target_log_probs(mt, evaluation.Method(), queries, 2, scoring)
    tokens = [_token_log_probs(mt, prompt, target) for _, prompt, target in queries]
    assert len(tokens[0]) > 1  # the multi-token target tells the three definitions apart
    expected = {
        "mean": [float(np.mean(t)) for t in tokens],
        "sum": [float(np.sum(t)) for t in tokens],
        "first": [t[0] for t in tokens],
    }[scoring]
    # Batched logits vs. unbatched: agreement to rounding.
    assert_equal_in_exact_arithmetic(scores, expected, precision_of(mt))


def test_results_name_their_target_scoring_and_prompt(mt, cases, resources):
    resources.target_scoring = "first"
    result = evaluation.efficacy(mt, evaluation.Method(), cases, resources)
    assert result.settings.target_scoring == "first"
    assert result.settings.prompt_source == resources.prompt_source
    assert result.settings.format_version == evaluation.cases.RESULT_FORMAT_VERSION
    with pytest.raises(ValueError, match="mean, sum, first"):
        evaluation.EvalResources(target_scoring="median")


def test_a_result_file_from_before_these_settings_is_not_reused(mt, cases, resources, tmp_path):
    result = evaluation.efficacy(mt, evaluation.Method(), cases, resources)
    old = result.to_dict()
    for key in ("target_scoring", "prompt_source", "format_version"):
        del old["settings"][key]
    path = evaluation.result_file(tmp_path, "unedited", "efficacy")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="format_version"):
        evaluation.run_benchmarks(
            mt, [evaluation.Method()], cases, resources, tmp_path, ["efficacy"]
        )


# --- the Method interface: registry and weight edits ----------------------------------------------


def test_every_registered_method_is_built_by_name(mt, cases, resources):
    built = {
        name: evaluation.build_method(name, mt, cases, resources)
        for name in registry.baselines_names()
    }
    assert sorted(built) == ["prefix", "replace", "unedited"]
    assert all(isinstance(method, evaluation.TextMethod) for method in built.values())
    assert built["prefix"].details() == {"prefix": "context"}
    assert built["replace"].details() == {"replacements": "3"}
    assert built["unedited"].details() == {}
    editor = editors.new_editor("identity", mt, layer=0)
    remedi = evaluation.build_method("remedi", mt, cases, resources, editor=editor)
    assert isinstance(remedi, evaluation.RemediMethod)
    with pytest.raises(ValueError, match="editors_dir"):
        evaluation.build_method("remedi", mt, cases, resources)
    with pytest.raises(ValueError, match=r"registered methods: .*prefix"):
        evaluation.build_method("rome-typo", mt, cases, resources)


SHIFT_CASE_IDS = {"Kelo Vantri": 10, "Xavi Bornadel": 11, "Mira Talovan": 12}


class ShiftLayerNorm(base.WeightEditor):
    """A weight edit for tests: shift the first layer's input norm bias, by the case id of the
    request's subject."""

    name = "shift"

    def __init__(self, alias: bool = False):
        self.alias = alias
        self.calls: list[int] = []

    def compute(self, mt, requests):
        (request,) = requests
        case_id = SHIFT_CASE_IDS[request.subject]
        self.calls.append(case_id)
        bias = dict(mt.model.named_parameters())["transformer.h.0.ln_1.bias"]
        new = bias if self.alias else bias + 0.5 * case_id
        return base.NewWeights({"transformer.h.0.ln_1.bias": new})


def shift(alias: bool = False) -> evaluation.WeightEditMethod:
    return evaluation.WeightEditMethod(ShiftLayerNorm(alias))


def test_a_weight_edit_runs_per_case_and_restores_every_weight_exactly(mt, cases):
    before = {name: p.detach().clone() for name, p in mt.model.named_parameters()}
    method = shift()
    queries = [
        (cases[0], cases[0].prompt, "Lisbon"),
        (cases[1], cases[1].prompt, "France"),
        (cases[0], "Kelo Vantri resides in", "Lisbon"),
    ]
    edited = evaluation.target_log_probs(mt, method, queries, batch_size=3)
    assert method.editor.calls == [10, 11]  # one edit per case, queries grouped under it
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    # Each query was scored under its own case's edit: compare with the edit applied by hand.
    for (case, prompt, target), score in zip(queries, edited, strict=True):
        with method.applied(mt, case):
            expected = evaluation.target_log_probs(
                mt, evaluation.Method(), [(case, prompt, target)]
            )
        assert_equal_in_exact_arithmetic(score, expected[0], precision_of(mt))  # other batching
    plain = evaluation.target_log_probs(mt, evaluation.Method(), queries, batch_size=3)
    assert np.all(np.abs(edited - plain) > 1e-4)


class ShiftByTarget(base.WeightEditor):
    """A weight edit for tests: shift the first layer's input norm bias by the length of the
    request's new target (so another target is another edit)."""

    name = "shift-by-target"

    def __init__(self):
        self.calls: list[str] = []

    def compute(self, mt, requests):
        (request,) = requests
        self.calls.append(request.target_new)
        bias = dict(mt.model.named_parameters())["transformer.h.0.ln_1.bias"]
        return base.NewWeights({"transformer.h.0.ln_1.bias": bias + len(request.target_new)})


def test_cases_with_one_id_and_other_targets_get_their_own_edits(mt, cases):
    """The cache and the grouping of queries are keyed by the whole edit request: the same case id
    with another target is another edit, never the first one reapplied."""
    first = cases[0]
    other = dataclasses.replace(first, target_new=first.target_new + " Island")
    method = evaluation.WeightEditMethod(ShiftByTarget())
    bias = "transformer.h.0.ln_1.bias"
    unedited = dict(mt.model.named_parameters())[bias].detach()
    for case in (first, other, first):
        new_bias = method.new_weights(mt, case)[bias]
        torch.testing.assert_close(new_bias, unedited + len(case.target_new), rtol=0, atol=0)
    assert method.editor.calls == [first.target_new, other.target_new]  # the first one cached
    queries = [(first, first.prompt, "Lisbon"), (other, other.prompt, "Lisbon")]
    scores = evaluation.target_log_probs(mt, method, queries, batch_size=2)
    for (case, prompt, target), score in zip(queries, scores, strict=True):
        with method.applied(mt, case):
            alone = evaluation.target_log_probs(mt, evaluation.Method(), [(case, prompt, target)])
        assert_equal_in_exact_arithmetic(score, alone[0], precision_of(mt))
    assert abs(scores[0] - scores[1]) > 1e-4


def test_a_weight_edit_is_restored_on_error_and_never_an_alias(mt, cases):
    before = {name: p.detach().clone() for name, p in mt.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), shift().applied(mt, cases[1]):
        assert not torch.equal(
            mt.model.transformer.h[0].ln_1.bias, before["transformer.h.0.ln_1.bias"]
        )
        raise RuntimeError("boom")
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    with (
        pytest.raises(ValueError, match="unedited tensor"),
        shift(alias=True).applied(mt, cases[0]),
    ):
        pass


def test_generation_and_relations_run_weight_edits_per_case(mt, mt64, cases, resources):
    method = shift()
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    texts = evaluation.generate_texts(mt64, method, queries, max_length=16, top_k=1)
    for (case, prompt), text in zip(queries, texts, strict=True):
        with method.applied(mt64, case):
            alone = evaluation.generate_texts(
                mt64, evaluation.Method(), [(case, prompt)], max_length=16, top_k=1
            )
        assert text == alone[0]
    result = evaluation.relation_specificity(mt, method, cases, resources)
    assert result.available and len(result.cases) == 3


# --- a SentencePiece/Llama-style tokenizer that adds BOS ----------------------------------------


@pytest.fixture(scope="module")
def llama64(llama_tokenizer) -> ModelAndTokenizer:
    from tests.model_fixtures import tiny_llama

    model = tiny_llama(llama_tokenizer, initializer_range=0.2).double().requires_grad_(False)
    return ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")


def test_scoring_with_a_bos_tokenizer_reads_the_target_tokens_only(llama64, cases):
    tokenizer = llama64.tokenizer
    queries = [
        (cases[2], cases[2].prompt, "Eiffel painter"),
        (cases[0], "Kelo Vantri, who was born far away, lives in the city of", "Lisbon"),
    ]
    for scoring in evaluation.TARGET_SCORINGS:
        scores = evaluation.target_log_probs(llama64, evaluation.Method(), queries, 2, scoring)
        for (_, prompt, target), score in zip(queries, scores, strict=True):
            full = tokenizer(f"{prompt} {target}")["input_ids"]
            prompt_ids = tokenizer(prompt)["input_ids"]
            assert full[0] == tokenizer.bos_token_id and full[: len(prompt_ids)] == prompt_ids
            with torch.no_grad():
                logits = llama64.model(input_ids=torch.tensor([full])).logits[0]
            log_probs = torch.log_softmax(logits, dim=-1)
            target_log_probs = [
                log_probs[position - 1, full[position]].item()
                for position in range(len(prompt_ids), len(full))
            ]
            expected = {
                "mean": float(np.mean(target_log_probs)),
                "sum": float(np.sum(target_log_probs)),
                "first": target_log_probs[0],
            }[scoring]
            # Batched and right-padded vs. alone agree to rounding.
            assert_equal_in_exact_arithmetic(score, expected, precision_of(llama64))


def test_remedi_edits_the_mention_after_a_bos_token(llama64, cases):
    editor = editors.new_editor("identity", llama64, layer=0)
    method = evaluation.RemediMethod(llama64, editor, cases[:1], alpha=20.0)
    prompts = ["Kelo Vantri lives in", "In the city, Kelo Vantri lives in"]
    inputs = llama64.tokenizer(
        prompts, return_tensors="pt", padding=True, return_offsets_mapping=True
    )
    offsets = inputs.pop("offset_mapping")
    ranges = evaluation.mention_token_ranges(
        prompts, ["Kelo Vantri"] * 2, offsets, inputs["attention_mask"]
    )
    for row, prompt in enumerate(prompts):
        start, end = ranges[row].tolist()
        assert end == start + 1 and start > 0  # never BOS
        assert offsets[row, start, 1].item() == prompt.index("Kelo Vantri") + len("Kelo Vantri")
    queries = [(cases[0], prompt, "Lisbon") for prompt in prompts]
    edited = evaluation.target_log_probs(llama64, method, queries, batch_size=2)
    plain = evaluation.target_log_probs(llama64, evaluation.Method(), queries, batch_size=2)
    assert np.all(np.abs(edited - plain) > 1e-6)


# --- scores from the logits of the target positions only ---------------------------------------


def _plain_scores(mt, prompt: str, target: str) -> list[float]:
    """log p of each token of ``target`` in "prompt target", alone, from every position's
    logits; the target's tokens are those whose characters start after the prompt."""
    text = f"{prompt} {target}"
    encoded = mt.tokenizer(text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    with torch.no_grad():
        log_probs = torch.log_softmax(mt.model(torch.tensor([ids])).logits[0], dim=-1)
    return [
        log_probs[position - 1, ids[position]].item()
        for position, (start, end) in enumerate(offsets)
        if start >= len(prompt) and end > start
    ]


@pytest.mark.parametrize("scoring", evaluation.TARGET_SCORINGS)
def test_scores_with_a_bos_tokenizer_are_those_of_every_positions_logits(llama_tokenizer, scoring):
    # The batched, padded scores read at the target positions and the plain ones differ by
    # rounding only.
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).double()
    mt = ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")
    queries = [
        (None, "Mira Talovan works as a", "famous singer"),
        (None, "The Eiffel Tower is located in", "Paris"),
        (None, "Kelo Vantri works for Nordavia and lives in", "the city of Oslo"),
    ]
    scores = evaluation.target_log_probs(mt, evaluation.Method(), queries, 2, scoring)
    tokens = [_plain_scores(mt, prompt, target) for _, prompt, target in queries]
    assert len(tokens[0]) > 1 and len(tokens[2]) > 2
    expected = {
        "mean": [float(np.mean(t)) for t in tokens],
        "sum": [float(np.sum(t)) for t in tokens],
        "first": [t[0] for t in tokens],
    }[scoring]
    assert_equal_in_exact_arithmetic(scores, expected, precision_of(mt))

    prompts = [(None, prompt) for _, prompt, _ in queries]
    predictions = evaluation.next_token_predictions(mt, evaluation.Method(), prompts, 2)
    for (_, prompt), prediction in zip(prompts, predictions, strict=True):
        ids = torch.tensor([llama_tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            assert prediction == int(mt.model(ids).logits[0, -1].argmax())


def test_queries_sharing_a_prompt_score_as_they_would_alone(mt64, cases):
    # One-token targets of the same case and prompt share a forward pass; another case's query
    # on the same text does not (the method may edit it differently). Shared, batched and
    # single runs differ by rounding only.
    editor = editors.new_editor("identity", mt64, layer=0)
    remedi = evaluation.RemediMethod(mt64, editor, cases, alpha=20.0)
    kelo, xavi = cases[0], cases[1]
    prompt = "Kelo Vantri lives in the city of"
    queries = [
        (kelo, prompt, "Oslo"),
        (kelo, prompt, "Lisbon"),
        (xavi, prompt, "Oslo"),
        (kelo, prompt, "Eiffel painter"),
    ]
    for scoring in evaluation.TARGET_SCORINGS:
        together = evaluation.target_log_probs(mt64, remedi, queries, 4, scoring)
        alone = [evaluation.target_log_probs(mt64, remedi, [q], 1, scoring)[0] for q in queries]
        assert_equal_in_exact_arithmetic(together, alone, precision_of(mt64))
    assert abs(together[0] - together[2]) > 1e-3  # the edit reaches Kelo's case only
