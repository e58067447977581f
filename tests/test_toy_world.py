"""The toy world's generator, corpus, tokenizer and exports (no LM training here)."""

from __future__ import annotations

import copy
import math
import re
from collections import Counter

import pytest

from remedi.toy import corpus, export
from remedi.toy.build import parse_toy_name, toy_world_name, toy_world_paths
from remedi.toy.lm import value_token_id
from remedi.toy.tokenizer import train_bpe_tokenizer
from remedi.toy.world import RELATIONS, Relation, World, generate_world


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(seed=3, num_entities=60)


def test_generator_is_deterministic_for_a_seed(world: World) -> None:
    assert generate_world(seed=3, num_entities=60).to_json() == world.to_json()
    assert generate_world(seed=4, num_entities=60).to_json() != world.to_json()


def test_world_round_trips_through_json(world: World) -> None:
    assert World.from_json(world.to_json()).to_json() == world.to_json()


def test_entities_have_unique_names_some_sharing_a_first_or_last_name(world: World) -> None:
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names)
    firsts = Counter(n.split()[0] for n in names)
    lasts = Counter(n.split()[1] for n in names)
    assert max(firsts.values()) > 1 or max(lasts.values()) > 1
    assert {e.split for e in world.entities} == {"train", "test"}


def test_every_entity_has_a_value_for_every_relation_and_implications_hold(world: World) -> None:
    assert world.implications, "nationality should imply language"
    for entity in world.entities:
        for relation in world.relations:
            assert entity.facts[relation.relation_id] in relation.values
        for implication in world.implications:
            source = entity.facts[implication.if_relation]
            assert entity.facts[implication.then_relation] == implication.mapping[source]


def test_world_json_has_the_layout_benchmarks_read(world: World) -> None:
    data = world.to_json()
    relation = data["relations"][0]
    assert {"relation_id", "name", "train_templates", "heldout_templates", "values"} <= set(
        relation
    )
    assert set(data["entities"][0]) == {"name", "facts", "split"}
    implication = data["implications"][0]
    assert implication["if_relation"] == "P27" and implication["then_relation"] == "P1412"
    assert implication["mapping"]["France"] == "French"


def test_heldout_templates_never_appear_in_training_text_but_their_words_do(world: World) -> None:
    documents = corpus.training_documents(world, max_continuation=3, binding_fraction=0.5)
    text = "\n".join(document.text for document in documents)
    seen_words = set(re.findall(r"\w+", text))
    for relation in world.relations:
        for template in relation.heldout_templates:
            # Any two-word name, including the invented people of binding documents.
            prefix, suffix = template.split("{}")
            pattern = re.escape(prefix) + r"\b\w+ \w+" + re.escape(suffix) + r"\b"
            assert not re.search(pattern, text), template
            unseen = set(re.findall(r"\w+", template)) - seen_words
            assert not unseen, f"held-out template {template!r} uses unseen words {unseen}"


def test_binding_documents_query_a_stated_value_through_the_entity(world: World) -> None:
    documents = corpus.training_documents(world, max_continuation=3, binding_fraction=0.5)
    binding = [d for d in documents if d.scored_from > 0]
    assert len(binding) == round(0.5 * len(corpus.fact_prompts(world, heldout=False)))
    names = {entity.name for entity in world.entities}
    facts = {(e.name, v) for e in world.entities for v in e.facts.values()}
    train_templates = [t for r in world.relations for t in r.train_templates]
    stated_counterfactuals = from_context = 0
    for document in binding:
        context, query = (
            document.text[: document.scored_from],
            document.text[document.scored_from :],
        )
        # The query is a training-template sentence; held-out templates never appear.
        matches = [re.fullmatch(_template_pattern(t), query) for t in train_templates]
        match = next(m for m in matches if m is not None)
        subject, value = match.groups()
        if f"{subject} " in context and f" {value}." in context:
            from_context += 1
            stated_counterfactuals += subject in names and (subject, value) not in facts
        else:  # a fact the context did not state: the memorised value
            assert (subject, value) in facts
    # Most queries read a value stated in context, many of them against the LM's memory.
    assert from_context > 0.6 * len(binding)
    assert stated_counterfactuals > 0.2 * len(binding)


def _template_pattern(template: str) -> str:
    prefix, suffix = template.split("{}")
    return re.escape(prefix) + r"(\w+ \w+)" + re.escape(suffix) + r" (\w+)\."


def test_relation_rejects_a_template_without_a_subject_slot() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Relation("P0", "bad", ("x",), ("no slot here",), (), ())


def test_tokenizer_makes_values_one_token_and_names_several(world: World) -> None:
    tokenizer = train_bpe_tokenizer(corpus.tokenizer_texts(world), vocab_size=1024)
    for relation in RELATIONS.values():
        for value in relation.values:
            value_token_id(tokenizer, value)
    name_lengths = [len(tokenizer(e.name)["input_ids"]) for e in world.entities]
    assert min(name_lengths) >= 3
    text = "Mira lives in Paris"
    encoding = tokenizer(text, return_offsets_mapping=True)
    start, end = encoding["offset_mapping"][-1]
    assert text[start:end].strip() == "Paris"


def test_counterfact_records_follow_the_world(world: World) -> None:
    records = export.counterfact_records(world, seed=0)
    export.validate_counterfact_records(records)
    assert len(records) == len(world.entities) * len(world.relations)
    assert len({r["case_id"] for r in records}) == len(records)
    facts = {e.name: e.facts for e in world.entities}
    ids = export.value_ids(world)
    for record in records:
        rewrite = record["requested_rewrite"]
        relation = world.relation(rewrite["relation_id"])
        subject = rewrite["subject"]
        assert rewrite["prompt"] in relation.train_templates
        assert rewrite["target_true"]["str"] == facts[subject][relation.relation_id]
        assert rewrite["target_new"]["str"] in relation.values
        assert rewrite["target_new"]["str"] != rewrite["target_true"]["str"]
        assert rewrite["target_new"]["id"] == ids[rewrite["target_new"]["str"]]
        assert record["paraphrase_prompts"] == [
            t.format(subject) for t in relation.heldout_templates
        ]
        assert all(subject in p for p in record["generation_prompts"])
        for key, target in (
            ("neighborhood_prompts", "target_true"),
            ("attribute_prompts", "target_new"),
        ):
            for prompt in record[key]:
                others = [n for n in facts if n != subject and n in prompt]
                assert others, prompt
                assert any(facts[n][relation.relation_id] == rewrite[target]["str"] for n in others)


def _valid_record() -> dict:
    return {
        "case_id": 0,
        "pararel_idx": 7,
        "requested_rewrite": {
            "prompt": "{} lives in",
            "relation_id": "P551",
            "target_new": {"str": "Paris", "id": "Q90"},
            "target_true": {"str": "Rome", "id": "Q220"},
            "subject": "Mira Talo",
        },
        "paraphrase_prompts": ["Mira Talo resides in"],
        "neighborhood_prompts": [],
        "attribute_prompts": [],
        "generation_prompts": ["Mira Talo is"],
    }


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda r: r.pop("paraphrase_prompts"), "missing keys \\['paraphrase_prompts'\\]"),
        (lambda r: r.update(extra=1), "unexpected keys \\['extra'\\]"),
        (lambda r: r.update(case_id="0"), "case_id must be an integer"),
        (lambda r: r["requested_rewrite"].update(prompt="lives in"), "contain '\\{\\}' once"),
        (lambda r: r["requested_rewrite"]["target_new"].update(str=""), "target_new.str"),
        (lambda r: r.update(neighborhood_prompts="x"), "neighborhood_prompts must be a list"),
    ],
)
def test_counterfact_validator_names_the_bad_record(corrupt, message: str) -> None:
    good = _valid_record()
    bad = copy.deepcopy(good)
    corrupt(bad)
    export.validate_counterfact_records([good])
    with pytest.raises(ValueError, match=message) as error:
        export.validate_counterfact_records([good, bad], source="cf.json")
    assert "cf.json: record 1" in str(error.value)


def test_counterfact_validator_rejects_a_non_list() -> None:
    with pytest.raises(ValueError, match="must be a JSON list"):
        export.validate_counterfact_records({"case_id": 0})


def test_attribute_snippets_in_rome_layout(world: World) -> None:
    snippets = export.attribute_snippets(world)
    ids = export.value_ids(world)
    by_id = {v: k for k, v in ids.items()}
    for entry in snippets:
        assert set(entry) == {"relation_id", "target_id", "samples"}
        value = by_id[entry["target_id"]]
        for sample in entry["samples"]:
            assert set(sample) == {"name", "text"}
            assert sample["name"] in sample["text"] and value in sample["text"]


def test_tfidf_statistics_match_sklearns_smooth_idf() -> None:
    documents = ["The cat sat.", "the dog sat", "a dog"]
    idf, vocabulary = export.tfidf_statistics(documents)
    # Single-letter words are not tokens; columns are alphabetical.
    assert vocabulary == {"cat": 0, "dog": 1, "sat": 2, "the": 3}
    n = 3
    expected = [math.log((1 + n) / (1 + df)) + 1 for df in (1, 2, 2, 2)]
    assert idf.tolist() == pytest.approx(expected)


def test_toy_names_parse_and_unknown_names_teach() -> None:
    assert parse_toy_name("toy") == ("toy", "gpt2")
    assert parse_toy_name("toy-small") == ("toy-small", "gpt2")
    assert parse_toy_name("toy-gptj") == ("toy", "gptj")
    assert parse_toy_name("toy-small-llama") == ("toy-small", "llama")
    assert toy_world_name(small=True, arch="neox") == "toy-small-neox"
    with pytest.raises(ValueError, match="valid names: toy\\[-gpt2"):
        parse_toy_name("toy-huge")


def test_toy_world_paths_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("REMEDI_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "d"))
    paths = toy_world_paths("toy-small-gptj")
    assert paths.model_dir == tmp_path / "m" / "toy-small-gptj"
    assert paths.counterfact_file == tmp_path / "d" / "toy-small-gptj" / "counterfact.json"
    assert not paths.is_built()
