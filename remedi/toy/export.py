"""Export the toy world as datasets in their real formats.

- CounterFact in ROME's exact format (``counterfact.json``), checked by
  :func:`validate_counterfact_records`, which loaders of real CounterFact files may reuse;
- ROME's consistency companions: ``attribute_snippets.json`` (reference texts per relation and
  target), ``idf.npy`` and ``tfidf_vocab.json`` (TF-IDF statistics in the layout of
  scikit-learn's ``TfidfVectorizer``, computed here without scikit-learn).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from remedi import errors
from remedi.toy.world import BIOGRAPHY_HEADER, Relation, World

COUNTERFACT_KEYS = frozenset(
    {
        "case_id",
        "pararel_idx",
        "requested_rewrite",
        "paraphrase_prompts",
        "neighborhood_prompts",
        "attribute_prompts",
        "generation_prompts",
    }
)
REWRITE_KEYS = frozenset({"prompt", "relation_id", "target_new", "target_true", "subject"})
TARGET_KEYS = frozenset({"str", "id"})
PROMPT_LIST_KEYS = (
    "paraphrase_prompts",
    "neighborhood_prompts",
    "attribute_prompts",
    "generation_prompts",
)

MAX_NEIGHBORS = 10
"""ROME's CounterFact has 10 neighborhood and 10 attribute prompts per record."""


def value_ids(world: World) -> dict[str, str]:
    """A stable Wikidata-like id ("Q1000", ...) for every value, in registry order."""
    ids: dict[str, str] = {}
    for relation in world.relations:
        for value in relation.values:
            ids.setdefault(value, f"Q{1000 + len(ids)}")
    return ids


def counterfact_records(world: World, seed: int) -> list[dict[str, Any]]:
    """One ROME-format CounterFact record per fact (entity, relation) of the world.

    ``target_new`` is another value of the same relation. ``case_id`` numbers facts in world
    order and ``pararel_idx`` identifies (relation, entity) as ``relation_index * 10000 +
    entity_index``; both are stable whatever records a later filter drops.
    """
    rng = random.Random(seed)
    ids = value_ids(world)
    records: list[dict[str, Any]] = []
    for entity_index, entity in enumerate(world.entities):
        for relation_index, relation in enumerate(world.relations):
            true_value = entity.facts[relation.relation_id]
            new_value = rng.choice([v for v in relation.values if v != true_value])

            records.append(
                {
                    "case_id": len(records),
                    "pararel_idx": relation_index * 10000 + entity_index,
                    "requested_rewrite": {
                        "prompt": rng.choice(relation.train_templates),
                        "relation_id": relation.relation_id,
                        "target_new": {"str": new_value, "id": ids[new_value]},
                        "target_true": {"str": true_value, "id": ids[true_value]},
                        "subject": entity.name,
                    },
                    "paraphrase_prompts": [
                        t.format(entity.name) for t in relation.heldout_templates
                    ],
                    "neighborhood_prompts": _prompts_about_others(
                        world, relation, true_value, entity.name, rng
                    ),
                    "attribute_prompts": _prompts_about_others(
                        world, relation, new_value, entity.name, rng
                    ),
                    "generation_prompts": generation_prompts(
                        world, entity.name, relation.relation_id
                    ),
                }
            )
    return records


def _prompts_about_others(
    world: World, relation: Relation, value: str, subject: str, rng: random.Random
) -> list[str]:
    """Training-template prompts about up to 10 other entities whose value is ``value``."""
    names = [e.name for e in world.entities_with(relation.relation_id, value) if e.name != subject]
    chosen = rng.sample(names, min(MAX_NEIGHBORS, len(names)))
    return [rng.choice(relation.train_templates).format(name) for name in chosen]


def generation_prompts(world: World, subject: str, relation_id: str) -> list[str]:
    """Open prompts about ``subject``: the relation's biography openings, then general ones."""
    relation = world.relation(relation_id)
    prompts = [
        sentence.split("{value}")[0].format(subject=subject).rstrip()
        for sentence in relation.biography_sentences
    ]
    prompts += [f"{subject} is a", f"{BIOGRAPHY_HEADER}{subject} is"]
    return list(dict.fromkeys(prompts))


def validate_counterfact_records(records: Any, source: str = "CounterFact records") -> None:
    """Raise ``ValueError`` naming the first record that is not in ROME's CounterFact format.

    The format: a JSON list of objects with exactly the keys ``case_id`` (int), ``pararel_idx``
    (int), ``requested_rewrite`` (``prompt`` with one ``{}`` for the subject, ``relation_id``,
    ``target_new`` and ``target_true`` as ``{"str", "id"}``, ``subject``), and the lists of
    strings ``paraphrase_prompts``, ``neighborhood_prompts``, ``attribute_prompts``,
    ``generation_prompts``.
    """
    if not isinstance(records, list):
        raise errors.FileFormatError(
            f"{source} must be a JSON list of CounterFact records, got {type(records).__name__}"
        )
    for index, record in enumerate(records):
        problem = _counterfact_record_problem(record)
        if problem:
            case = record.get("case_id", "?") if isinstance(record, dict) else "?"
            raise errors.FileFormatError(
                f"{source}: record {index} (case_id {case}) is not in ROME's CounterFact "
                f"format: {problem}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _keys_problem(obj: Any, expected: frozenset[str], where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"{where} must be an object, got {type(obj).__name__}"
    missing, extra = expected - obj.keys(), obj.keys() - expected
    if missing or extra:
        return f"{where} has missing keys {sorted(missing)} and unexpected keys {sorted(extra)}"
    return None


def _counterfact_record_problem(record: Any) -> str | None:
    problem = _keys_problem(record, COUNTERFACT_KEYS, "the record")
    if problem:
        return problem
    for key in ("case_id", "pararel_idx"):
        if not _is_int(record[key]):
            return f"{key} must be an integer, got {record[key]!r}"
    rewrite = record["requested_rewrite"]
    problem = _keys_problem(rewrite, REWRITE_KEYS, "requested_rewrite")
    if problem:
        return problem
    for key in ("prompt", "relation_id", "subject"):
        if not isinstance(rewrite[key], str) or not rewrite[key]:
            return f"requested_rewrite.{key} must be a non-empty string, got {rewrite[key]!r}"
    if rewrite["prompt"].count("{}") != 1:
        return f"requested_rewrite.prompt must contain '{{}}' once, got {rewrite['prompt']!r}"
    for key in ("target_new", "target_true"):
        problem = _keys_problem(rewrite[key], TARGET_KEYS, f"requested_rewrite.{key}")
        if problem:
            return problem
        for field in ("str", "id"):
            if not isinstance(rewrite[key][field], str) or not rewrite[key][field]:
                return f"requested_rewrite.{key}.{field} must be a non-empty string"
    for key in PROMPT_LIST_KEYS:
        prompts = record[key]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            return f"{key} must be a list of strings"
    return None


def attribute_snippets(world: World) -> list[dict[str, Any]]:
    """ROME's ``attribute_snippets.json``: for each (relation, value), texts about holders.

    Each entry is ``{"relation_id", "target_id", "samples": [{"name", "text"}]}``; the texts are
    the biographies of the entities with that value.
    """
    ids = value_ids(world)
    snippets = []
    for relation in world.relations:
        for value in relation.values:
            samples = [
                {"name": entity.name, "text": text}
                for entity in world.entities_with(relation.relation_id, value)
                for text in world.biographies.get(entity.name, [])
            ]
            if samples:
                snippets.append(
                    {
                        "relation_id": relation.relation_id,
                        "target_id": ids[value],
                        "samples": samples,
                    }
                )
    return snippets


_WORD = re.compile(r"(?u)\b\w\w+\b")


def tfidf_statistics(documents: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """IDF weights and vocabulary as scikit-learn's default ``TfidfVectorizer`` fits them.

    Lower-cased words of two or more word characters; columns in alphabetical order; smooth
    idf ``ln((1 + n) / (1 + df)) + 1``.
    """
    document_frequency: Counter[str] = Counter()
    for document in documents:
        document_frequency.update(set(_WORD.findall(document.lower())))
    vocabulary = {word: column for column, word in enumerate(sorted(document_frequency))}
    n = len(documents)
    idf = np.array(
        [math.log((1 + n) / (1 + document_frequency[word])) + 1 for word in vocabulary],
        dtype=np.float64,
    )
    return idf, vocabulary


def snippet_texts(snippets: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every sample text of an ``attribute_snippets`` list, in order."""
    return [sample["text"] for entry in snippets for sample in entry["samples"]]


# ---------------------------------------------------------------------------------------------
# Bias in Bios: biographies whose occupation is stated in one sentence.

BIOSBIAS_PER_ENTITY = 2
"""Biographies per entity in the toy Bias in Bios export."""

BIOSBIAS_PROMPT_TEMPLATE = "{} works as a"
"""The toy export's prompt: one of the occupation relation's training templates. The reference's
"{} has the occupation of" is a phrasing the toy LM never saw (it reads a stated occupation back
through it for only ~10-20% of held-out people, against ~90% through this one)."""

# The occupation sentence (the second of each biography, the one a sample keeps): {name} is a
# variant of the person's name, {value} the occupation; the other slots are the person's facts.
# Each has at least 10 words once the name is the first name, as the reference requires.
_OCCUPATION_SENTENCES = (
    "{name} is a {value} who lives in {P551} and works for {P108}.",
    "{name} works as a {value} and speaks {P1412} at home in {P551}.",
    "{name} has a job as a {value} and is a citizen of {P27}.",
)
# Sentences that do not name the person (the sample then starts "About {first}: ").
_UNNAMED_OCCUPATION_SENTENCES = ("Works as a {value} in {P551} and speaks {P1412} with friends.",)
_FIRST_SENTENCES = ("{full} lives in {P551}.", "{full} is employed by {P108}.")
_LAST_SENTENCES = ("{full} speaks {P1412}.", "{full} comes from {P27}.")
# How the occupation sentence names the person: the reference maps all of these to the first name.
_NAME_FORMS = ("{first} {last}", "{last}", "Dr. {last}", "Prof. {first} {last}", "")


def biosbias_records(world: World) -> list[dict[str, Any]]:
    """Toy biographies in the official Bias in Bios pickle's record format (pickle-free).

    :data:`BIOSBIAS_PER_ENTITY` per entity, seeded by the world's seed (the same world gives
    the same records). Each has three sentences: a fact about the person, then the one that
    states their occupation (the world's P106 value; the sentence a sample keeps), then another
    fact. The records carry ``prompt_template`` (:data:`BIOSBIAS_PROMPT_TEMPLATE`), an extension
    of the format read by :mod:`remedi.data.biosbias`. Toy people have no gender (``""``).
    """
    rng = random.Random(world.seed + 106)
    records: list[dict[str, Any]] = []
    for entity in world.entities:
        first, last = entity.name.split(" ", 1)
        facts = dict(entity.facts)
        for _ in range(BIOSBIAS_PER_ENTITY):
            form = rng.choice(_NAME_FORMS).format(first=first, last=last)
            pool = _OCCUPATION_SENTENCES if form else _UNNAMED_OCCUPATION_SENTENCES
            occupation = rng.choice(pool).format(name=form, value=facts["P106"], **facts)
            opening = rng.choice(_FIRST_SENTENCES).format(full=entity.name, **facts)
            closing = rng.choice(_LAST_SENTENCES).format(full=entity.name, **facts)
            bio = f"{occupation} {closing}"
            records.append(
                {
                    "path": f"toy/{len(records)}",
                    "URI": f"toy://{entity.name.replace(' ', '_')}",
                    "name": [first, "", last],
                    "title": facts["P106"],
                    "gender": "",
                    "start_pos": len(opening) + 1,
                    "raw": f"{opening} {bio}",
                    "bio": bio,
                    "prompt_template": BIOSBIAS_PROMPT_TEMPLATE,
                }
            )
    return records
