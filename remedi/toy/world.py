"""A seeded synthetic knowledge base: invented people, their facts, and how facts are phrased.

Relations live in a registry (:data:`RELATIONS`), so that later datasets (biographies in the
style of Bias in Bios, McRae-style feature norms) add entries instead of changing the generator.
Each relation has a closed set of single-word values (real words, so each is one BPE token with a
leading space), templates the LM is trained on, and templates held out from LM training to measure
paraphrase generalisation. Implications (nationality -> language) tie relations together, so an
edit can be checked both for what it should change and for what it should leave alone.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from remedi import errors

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Relation:
    """One relation of the world, with its values and the phrasings of a fact about it.

    Templates contain ``{}`` where the subject goes and end right before the value, as in
    ROME's CounterFact prompts. ``biography_sentences`` contain ``{subject}`` and ``{value}``
    and are used only inside biography paragraphs.
    """

    relation_id: str
    name: str
    values: tuple[str, ...]
    train_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]
    biography_sentences: tuple[str, ...]

    def __post_init__(self) -> None:
        for template in (*self.train_templates, *self.heldout_templates):
            if template.count("{}") != 1:
                raise errors.UsageError(
                    f"relation {self.relation_id}: template {template!r} must contain exactly "
                    "one '{}' for the subject"
                )
        for value in self.values:
            if not value or any(ch.isspace() for ch in value):
                raise errors.UsageError(
                    f"relation {self.relation_id}: value {value!r} must be one word without spaces"
                )


@dataclass(frozen=True)
class Implication:
    """``then_relation``'s value is a function (``mapping``) of ``if_relation``'s value."""

    if_relation: str
    then_relation: str
    mapping: Mapping[str, str]


COUNTRY_LANGUAGE = {
    "France": "French",
    "Germany": "German",
    "Italy": "Italian",
    "Spain": "Spanish",
    "Mexico": "Spanish",
    "Japan": "Japanese",
    "Russia": "Russian",
    "Brazil": "Portuguese",
    "Portugal": "Portuguese",
    "Sweden": "Swedish",
    "Poland": "Polish",
    "Greece": "Greek",
}

RELATIONS: dict[str, Relation] = {}
"""Registry of relations, keyed by Wikidata-style relation id (as in CounterFact)."""

IMPLICATIONS: list[Implication] = []
"""Registry of implications between relations; implied relations are never sampled."""


def register_relation(relation: Relation) -> Relation:
    """Add ``relation`` to :data:`RELATIONS` (an id may be registered once)."""
    if relation.relation_id in RELATIONS:
        raise errors.UsageError(
            f"relation {relation.relation_id} is already registered; give the new one another id"
        )
    RELATIONS[relation.relation_id] = relation
    return relation


def register_implication(implication: Implication) -> Implication:
    """Add ``implication`` to :data:`IMPLICATIONS` after checking it covers every value."""
    source = RELATIONS[implication.if_relation]
    target = RELATIONS[implication.then_relation]
    missing = set(source.values) - set(implication.mapping)
    unknown = set(implication.mapping.values()) - set(target.values)
    if missing or unknown:
        raise errors.UsageError(
            f"implication {source.relation_id} -> {target.relation_id} must map every value of "
            f"{source.relation_id} to a value of {target.relation_id}; missing keys {sorted(missing)}, "
            f"unknown values {sorted(unknown)}"
        )
    IMPLICATIONS.append(implication)
    return implication


register_relation(
    Relation(
        relation_id="P27",
        name="country of citizenship",
        values=tuple(COUNTRY_LANGUAGE),
        train_templates=(
            "{} is a citizen of",
            "{} holds a passport from",
            "{} has citizenship of",
            "The home country of {} is",
        ),
        heldout_templates=("The country of citizenship of {} is", "{} holds citizenship of"),
        biography_sentences=("{subject} is a citizen of {value}.", "{subject} comes from {value}."),
    )
)
register_relation(
    Relation(
        relation_id="P1412",
        name="languages spoken, written or signed",
        values=tuple(sorted(set(COUNTRY_LANGUAGE.values()))),
        train_templates=(
            "{} speaks",
            "The native language of {} is",
            "{} writes in",
            "The language of {} is",
        ),
        heldout_templates=("The language {} speaks is", "{} writes and speaks"),
        biography_sentences=(
            "{subject} speaks {value}.",
            "{subject} writes in {value}.",
            "{subject} reads and writes {value}.",
        ),
    )
)
register_relation(
    Relation(
        relation_id="P551",
        name="residence",
        values=(
            "Paris",
            "London",
            "Tokyo",
            "Berlin",
            "Madrid",
            "Rome",
            "Moscow",
            "Sydney",
            "Toronto",
            "Chicago",
            "Cairo",
            "Vienna",
        ),
        train_templates=(
            "{} lives in the city of",
            "{} resides in",
            "The home of {} is in",
            "{} has a home in",
        ),
        heldout_templates=("The city {} lives in is", "{} resides in the city of"),
        biography_sentences=("{subject} lives in {value}.", "{subject} resides in {value}."),
    )
)
register_relation(
    Relation(
        relation_id="P106",
        name="occupation",
        values=(
            "doctor",
            "lawyer",
            "teacher",
            "painter",
            "singer",
            "farmer",
            "pilot",
            "chef",
            "nurse",
            "writer",
            "baker",
            "dancer",
        ),
        train_templates=(
            "{} works as a",
            "The profession of {} is",
            "{} is employed as a",
            "{} has a job as a",
        ),
        heldout_templates=("The job of {} is", "{} is by profession a"),
        biography_sentences=("{subject} is a {value}.", "{subject} works as a {value}."),
    )
)
register_relation(
    Relation(
        relation_id="P108",
        name="employer",
        values=(
            "Google",
            "Microsoft",
            "Apple",
            "Amazon",
            "Toyota",
            "Nokia",
            "Siemens",
            "Samsung",
            "Intel",
            "Sony",
            "Boeing",
            "IBM",
        ),
        train_templates=(
            "{} works for",
            "{} is employed by",
            "The employer of {} is",
            "{} has a job at",
        ),
        heldout_templates=("The employer {} works for is", "{} works at"),
        biography_sentences=("{subject} works for {value}.", "{subject} is employed by {value}."),
    )
)
register_implication(
    Implication(if_relation="P27", then_relation="P1412", mapping=dict(COUNTRY_LANGUAGE))
)


@dataclass
class Entity:
    """An invented person: a full name, one value per relation, and an editor-training split.

    ``popularity`` is the entity's popularity tier in a long-tail world (see
    :mod:`remedi.toy.popularity`), None in worlds without tiers.
    """

    name: str
    facts: dict[str, str]
    split: Split
    popularity: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entity's ``world.json`` entry (no ``popularity`` key in worlds without tiers)."""
        data = asdict(self)
        if self.popularity is None:
            del data["popularity"]
        return data


@dataclass
class World:
    """The knowledge base: relations (with their phrasings), entities, implications."""

    relations: list[Relation]
    entities: list[Entity]
    implications: list[Implication]
    seed: int
    biographies: dict[str, list[str]] = field(default_factory=dict)

    def relation(self, relation_id: str) -> Relation:
        for relation in self.relations:
            if relation.relation_id == relation_id:
                return relation
        known = ", ".join(r.relation_id for r in self.relations)
        raise KeyError(f"relation {relation_id!r} is not in this world (known: {known})")

    def entities_of_split(self, split: Split) -> set[str]:
        """Names of the entities in the editor-training ``split`` (``train`` or ``test``)."""
        return {entity.name for entity in self.entities if entity.split == split}

    def entities_with(self, relation_id: str, value: str) -> list[Entity]:
        """Entities whose ``relation_id`` is ``value``, in world order."""
        return [entity for entity in self.entities if entity.facts.get(relation_id) == value]

    def subjects_by_fact(self) -> dict[tuple[str, str], list[str]]:
        """``(relation_id, value) -> names of the entities that have it``, in world order: the
        world's facts as plain data (what :func:`remedi.evaluation.find_replacements` reads)."""
        subjects: dict[tuple[str, str], list[str]] = {}
        for entity in self.entities:
            for relation_id, value in entity.facts.items():
                subjects.setdefault((relation_id, value), []).append(entity.name)
        return subjects

    def to_json(self) -> dict[str, Any]:
        """The ``world.json`` layout (see SPEC): relations, entities, implications, biographies."""
        return {
            "seed": self.seed,
            "relations": [
                {
                    "relation_id": r.relation_id,
                    "name": r.name,
                    "train_templates": list(r.train_templates),
                    "heldout_templates": list(r.heldout_templates),
                    "biography_sentences": list(r.biography_sentences),
                    "values": list(r.values),
                }
                for r in self.relations
            ],
            "entities": [entity.to_json() for entity in self.entities],
            "implications": [
                {
                    "if_relation": i.if_relation,
                    "then_relation": i.then_relation,
                    "mapping": dict(i.mapping),
                }
                for i in self.implications
            ],
            "biographies": self.biographies,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> World:
        """Rebuild a world from :meth:`to_json`'s layout."""
        relations = [
            Relation(
                relation_id=r["relation_id"],
                name=r["name"],
                values=tuple(r["values"]),
                train_templates=tuple(r["train_templates"]),
                heldout_templates=tuple(r["heldout_templates"]),
                biography_sentences=tuple(r.get("biography_sentences", ())),
            )
            for r in data["relations"]
        ]
        return cls(
            relations=relations,
            entities=[
                Entity(e["name"], dict(e["facts"]), e["split"], e.get("popularity"))
                for e in data["entities"]
            ],
            implications=[
                Implication(i["if_relation"], i["then_relation"], dict(i["mapping"]))
                for i in data["implications"]
            ],
            seed=int(data.get("seed", 0)),
            biographies={k: list(v) for k, v in data.get("biographies", {}).items()},
        )


# Syllables that read as names in most European languages and avoid real words.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "v", "k")


def _syllable(rng: random.Random, coda: bool) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def invent_names(rng: random.Random, count: int, syllables: tuple[int, int]) -> list[str]:
    """``count`` distinct pronounceable capitalised names of ``syllables`` (min, max) syllables."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        n_syllables = rng.randint(*syllables)
        name = "".join(_syllable(rng, coda=i == n_syllables - 1) for i in range(n_syllables))
        name = name.capitalize()
        if name not in seen and len(name) >= 4:
            seen.add(name)
            names.append(name)
    return names


def generate_world(
    seed: int,
    num_entities: int,
    test_fraction: float = 0.2,
    relation_ids: Iterable[str] | None = None,
    biographies_per_entity: int = 2,
) -> World:
    """Generate a world of ``num_entities`` people with one value for each relation.

    Full names are unique; first and last names come from pools smaller than the entity count,
    so some people share a first or a last name and the LM must use the whole name. Values of
    relations that an implication determines are derived, the others sampled uniformly.
    ``test_fraction`` of entities are marked ``"test"``: editors are evaluated on them without
    having been trained on them (the LM itself learns every entity's facts).
    """
    if num_entities < 4:
        raise errors.UsageError(
            f"num_entities must be at least 4 to split entities, got {num_entities}"
        )
    rng = random.Random(seed)
    relations = [RELATIONS[r] for r in (relation_ids or RELATIONS)]
    included = {r.relation_id for r in relations}
    implications = [
        i for i in IMPLICATIONS if i.if_relation in included and i.then_relation in included
    ]
    implied = {i.then_relation: i for i in implications}

    first_names = invent_names(rng, max(4, int(num_entities * 0.6)), syllables=(2, 2))
    last_names = invent_names(rng, max(4, int(num_entities * 0.8)), syllables=(2, 3))
    full_names: list[str] = []
    seen: set[str] = set()
    while len(full_names) < num_entities:
        name = f"{rng.choice(first_names)} {rng.choice(last_names)}"
        if name not in seen:
            seen.add(name)
            full_names.append(name)

    num_test = max(1, round(num_entities * test_fraction))
    test_names = set(rng.sample(full_names, num_test))
    entities = []
    for name in full_names:
        facts = {
            r.relation_id: rng.choice(r.values) for r in relations if r.relation_id not in implied
        }
        for implication in implications:
            facts[implication.then_relation] = implication.mapping[facts[implication.if_relation]]
        ordered = {r.relation_id: facts[r.relation_id] for r in relations}
        entities.append(Entity(name, ordered, "test" if name in test_names else "train"))

    world = World(relations=relations, entities=entities, implications=implications, seed=seed)
    world.biographies = {
        entity.name: [write_biography(world, entity, rng) for _ in range(biographies_per_entity)]
        for entity in entities
    }
    return world


BIOGRAPHY_HEADER = "The following is an excerpt from a Wikipedia article:\n\n"
"""ROME's essence prompt prefix; half the biographies start with it so the LM knows the frame."""


def write_biography(world: World, entity: Entity, rng: random.Random) -> str:
    """A short paragraph stating each of ``entity``'s facts once, in a random order.

    The opening sentence combines occupation and nationality when both exist (so the essence
    prompt "... {entity} is" continues with facts); held-out templates are never used.
    """
    facts = dict(entity.facts)
    sentences = []
    if "P106" in facts and "P27" in facts:
        sentences.append(f"{entity.name} is a {facts.pop('P106')} from {facts.pop('P27')}.")
    rest = [
        rng.choice(world.relation(rid).biography_sentences).format(subject=entity.name, value=value)
        for rid, value in facts.items()
    ]
    rng.shuffle(rest)
    text = " ".join(sentences + rest)
    return BIOGRAPHY_HEADER + text if rng.random() < 0.5 else text
