"""Popularity tiers of the long-tail toy world: exposure per entity, and default worlds untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter

import pytest

from remedi import errors
from remedi.toy import corpus
from remedi.toy.build import SIZES, default_config, parse_toy_name
from remedi.toy.popularity import (
    LONG_TAIL_TIERS,
    PopularityTier,
    assign_popularity,
    check_tiers,
    fact_sentence_counts,
)
from remedi.toy.world import World, generate_world

# sha256 of the small world's training documents (text, scored_from) as built before
# popularity tiers existed (main at eb646d8): a default world must not change.
SMALL_WORLD_CORPUS_SHA256 = "3cb8c0b0145afc1226a136d24c3c5e1e79b67cadf3334fb113ba90c4aeb2e718"


def _tiered_world(num_entities: int = 50) -> World:
    world = generate_world(seed=3, num_entities=num_entities)
    assign_popularity(world, LONG_TAIL_TIERS)
    return world


def _corpus_sha256(documents: list[corpus.Document]) -> str:
    rows = [[document.text, document.scored_from] for document in documents]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_the_default_small_world_corpus_is_unchanged() -> None:
    config = SIZES["toy-small"]
    assert config.popularity is None and SIZES["toy"].popularity is None
    world = generate_world(
        0,
        config.num_entities,
        test_fraction=config.test_fraction,
        biographies_per_entity=config.biographies_per_entity,
    )
    documents = corpus.training_documents(
        world, config.max_continuation, config.binding_fraction, config.binding
    )
    assert _corpus_sha256(documents) == SMALL_WORLD_CORPUS_SHA256
    assert all("popularity" not in entity for entity in world.to_json()["entities"])


def test_tiers_are_assigned_by_share_without_changing_the_world() -> None:
    plain = generate_world(seed=3, num_entities=50)
    world = _tiered_world(50)
    counts = Counter(entity.popularity for entity in world.entities)
    assert counts == {"head": 5, "torso": 10, "tail": 15, "rare": 20}
    # Names, facts, splits and biographies are the untiered world's.
    tiered_json = world.to_json()
    for entity in tiered_json["entities"]:
        entity.pop("popularity")
    assert tiered_json == plain.to_json()
    assert World.from_json(world.to_json()).to_json() == world.to_json()


def test_tiers_set_each_entitys_fact_sentences_biographies_and_continuations() -> None:
    world = _tiered_world(50)
    tier_of = {tier.name: tier for tier in LONG_TAIL_TIERS}
    counts = fact_sentence_counts(world, LONG_TAIL_TIERS)
    documents = corpus.training_documents(
        world, max_continuation=3, binding_fraction=0.0, tiers=LONG_TAIL_TIERS
    )
    biographies = {text for texts in world.biographies.values() for text in texts}
    texts = {document.text for document in documents}
    fact_documents = [d.text for d in documents if d.text not in biographies]
    for entity in world.entities:
        tier = tier_of[str(entity.popularity)]
        for relation in world.relations:
            openings = tuple(t.format(entity.name) + " " for t in relation.train_templates)
            opening = [text for text in fact_documents if text.startswith(openings)]
            # One document per stated template and repeat.
            assert len(opening) == counts[entity.name, relation.relation_id], tier.name
            if tier.mention_probability == 1:
                assert len(opening) == tier.templates * tier.repeats
            continued = [text for text in opening if text.count(".") > 1]
            if not tier.continuations:
                assert not continued, f"{tier.name}: a fact sentence continued"
        kept = [text for text in world.biographies[entity.name] if text in texts]
        assert len(kept) == tier.biographies
    # Popular tiers' facts are stated more often; some rare facts never.
    by_tier: dict[str, list[int]] = {}
    for (name, _), count in counts.items():
        by_tier.setdefault(str(_world_tier(world, name)), []).append(count)
    means = [sum(by_tier[t.name]) / len(by_tier[t.name]) for t in LONG_TAIL_TIERS]
    assert means == sorted(means, reverse=True) and means[0] == 24 and means[1] == 12
    assert 0 in by_tier["rare"] and 0 in by_tier["tail"]
    head = next(e for e in world.entities if e.popularity == "head")
    rare = next(e for e in world.entities if e.popularity == "rare")
    assert _mentions(documents, head.name) > 10 * _mentions(documents, rare.name)


def _world_tier(world: World, name: str) -> str | None:
    return next(entity.popularity for entity in world.entities if entity.name == name)


def _mentions(documents: list[corpus.Document], name: str) -> int:
    return sum(len(re.findall(re.escape(name), d.text)) for d in documents)


def test_unstated_queries_ask_about_entities_in_proportion_to_their_exposure() -> None:
    world = _tiered_world(50)
    only_first = [1.0] + [0.0] * (len(world.entities) - 1)
    settings = corpus.BindingSettings(unstated_query_fraction=1.0)
    documents = corpus.binding_documents(world, 40, settings, entity_weights=only_first)
    first = world.entities[0].name
    assert all(d.text[d.scored_from :].count(first) == 1 for d in documents)


def _queried_facts(world: World, documents: list[corpus.Document]) -> list[tuple[str, str, str]]:
    """(subject, relation id, answered value) of each binding document's scored query."""
    patterns = [
        (relation.relation_id, re.escape(prefix) + r"(\w+ \w+)" + re.escape(suffix) + r" (\w+)\.")
        for relation in world.relations
        for prefix, suffix in (template.split("{}") for template in relation.train_templates)
    ]
    queried = []
    for document in documents:
        query = document.text[document.scored_from :]
        relation_id, match = next(
            (rid, m) for rid, pattern in patterns if (m := re.fullmatch(pattern, query))
        )
        queried.append((match.group(1), relation_id, match.group(2)))
    return queried


def test_misstatements_are_corrected_the_more_often_the_more_the_fact_is_stated() -> None:
    world = _tiered_world(50)
    tier_by_name = {entity.name: entity.popularity for entity in world.entities}
    facts = {entity.name: entity.facts for entity in world.entities}
    # Every document misstates one fact of a world entity and queries it.
    settings = corpus.BindingSettings(
        invented_subject_fraction=0.0,
        true_value_fraction=0.0,
        unstated_query_fraction=0.0,
        max_statements=1,
        correction_half=4.0,
    )
    sentences = {"head": 400, "torso": 4, "tail": 0, "rare": 0}
    counts = {
        (entity.name, relation.relation_id): sentences[str(entity.popularity)]
        for entity in world.entities
        for relation in world.relations
    }
    documents = corpus.binding_documents(world, 1000, settings, fact_counts=counts)
    corrected: dict[str, list[bool]] = {name: [] for name in sentences}
    for subject, relation_id, value in _queried_facts(world, documents):
        corrected[str(tier_by_name[subject])].append(value == facts[subject][relation_id])
    share = {tier: sum(flags) / len(flags) for tier, flags in corrected.items()}
    # n / (n + 4): 0.99 for 400 sentences, 0.5 for 4 (binomial, >= 60 documents a tier), 0 for none.
    assert share["head"] > 0.9 and 0.3 < share["torso"] < 0.7
    assert share["tail"] == share["rare"] == 0
    assert min(len(flags) for flags in corrected.values()) >= 60

    uncorrected = corpus.binding_documents(
        world, 600, dataclasses.replace(settings, correction_half=None), fact_counts=counts
    )
    assert all(
        value != facts[subject][relation_id]
        for subject, relation_id, value in _queried_facts(world, uncorrected)
    )
    with pytest.raises(errors.UsageError, match="fact_counts"):
        corpus.binding_documents(world, 10, settings)
    with pytest.raises(errors.UsageError, match="must be > 0"):
        corpus.binding_documents(
            world, 10, dataclasses.replace(settings, correction_half=0.0), fact_counts=counts
        )


def test_the_long_tail_world_is_a_registered_size() -> None:
    assert parse_toy_name("toy-longtail") == ("toy-longtail", "gpt2")
    assert parse_toy_name("toy-longtail-llama") == ("toy-longtail", "llama")
    config = default_config("toy-longtail")
    assert config.popularity == LONG_TAIL_TIERS and config.keep_unknown_records
    # Its binding documents correct misstated facts by exposure; the default worlds' do not.
    assert config.binding.correction_half is not None
    assert SIZES["toy"].binding.correction_half is None
    assert SIZES["toy-small"].binding.correction_half is None


def test_bad_tiers_are_refused_with_the_reason() -> None:
    with pytest.raises(errors.UsageError, match="sum to 1"):
        check_tiers([PopularityTier("all", 0.5, templates=1)])
    with pytest.raises(errors.UsageError, match="distinct"):
        check_tiers([PopularityTier("a", 0.5, templates=1), PopularityTier("a", 0.5, templates=2)])


def test_world_tiers_are_found_by_name_and_shape_the_statistics_corpus(tmp_path) -> None:
    from remedi import corpora, env
    from remedi.toy.build import toy_world_paths
    from remedi.toy.popularity import world_tiers

    plain = generate_world(seed=3, num_entities=50)
    tiered = _tiered_world(50)
    assert world_tiers(plain) is None
    assert world_tiers(tiered) == LONG_TAIL_TIERS
    with env.overridden(REMEDI_DATA_DIR=tmp_path):
        world_file = toy_world_paths("toy-longtail").world_file
        world_file.parent.mkdir(parents=True)
        world_file.write_text(json.dumps(tiered.to_json()), encoding="utf-8")
        texts = corpora.open_corpus("toy:toy-longtail").texts(10**6)
    expected = corpus.training_documents(tiered, tiers=LONG_TAIL_TIERS)
    assert texts == [document.text for document in expected]
    rare = tuple(entity.name for entity in tiered.entities if entity.popularity == "rare")
    plain_texts = [document.text for document in corpus.training_documents(plain)]
    # rare entities' facts are stated less often (some never) than in the untiered corpus
    assert sum(rare[0] in text for text in texts) < sum(rare[0] in text for text in plain_texts)
    tiered.entities[0].popularity = "celebrity"
    with pytest.raises(errors.UsageError, match="KNOWN_TIER_SETS"):
        world_tiers(tiered)
