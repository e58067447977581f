"""The toy LM's training text: fact sentences, biographies, and in-context binding documents.

Fact sentences and biographies make the LM memorise each entity's facts. Binding documents teach
it to *use* facts stated in its context, as real LMs do and as REMEDI relies on: a document states
a value for an entity (often not its memorised one, sometimes about an invented person outside
the world), mentions other people with their own stated values, then asks about the first entity
again with a (possibly different) training template; only that last sentence is scored, and its
answer is the stated value. Since the distractors state values of the same relations, the answer
can only be found through the entity's name, so the LM learns to bind stated attributes to an
entity mention and read them out later, the pathway that an edit of the mention's hidden state
takes. Some binding documents ask instead about a fact that the context did not state (the answer
is the memorised value), so that a stated fact does not overwrite the others. In a long-tail world
a misstated well-known fact is often corrected instead (``BindingSettings.correction_half``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remedi import errors
from remedi.toy import popularity
from remedi.toy.popularity import PopularityTier
from remedi.toy.world import BIOGRAPHY_HEADER, Entity, Relation, World, invent_names


@dataclass(frozen=True)
class FactPrompt:
    """A prompt that should be completed by ``value`` (the entity's value for the relation)."""

    entity: str
    relation_id: str
    template: str
    heldout: bool
    value: str

    @property
    def prompt(self) -> str:
        return self.template.format(self.entity)


def fact_sentence(template: str, subject: str, value: str) -> str:
    """``"{subject} lives in the city of {value}."`` style sentence from a template."""
    return f"{template.format(subject)} {value}."


def fact_prompts(world: World, heldout: bool) -> list[FactPrompt]:
    """Every (entity, relation, template) prompt, with training or held-out templates."""
    prompts = []
    for entity in world.entities:
        for relation in world.relations:
            templates = relation.heldout_templates if heldout else relation.train_templates
            for template in templates:
                prompts.append(
                    FactPrompt(
                        entity=entity.name,
                        relation_id=relation.relation_id,
                        template=template,
                        heldout=heldout,
                        value=entity.facts[relation.relation_id],
                    )
                )
    return prompts


@dataclass(frozen=True)
class Document:
    """A training text whose tokens before character ``scored_from`` are context only: the LM
    reads them but is not trained to predict them (they may state counterfactual values)."""

    text: str
    scored_from: int = 0


def fact_sentences(world: World) -> list[str]:
    """One training sentence per fact and training template (held-out templates never appear)."""
    return [
        fact_sentence(p.template, p.entity, p.value) for p in fact_prompts(world, heldout=False)
    ]


def training_documents(
    world: World,
    max_continuation: int = 0,
    binding_fraction: float = 0.0,
    binding: BindingSettings | None = None,
    tiers: Sequence[PopularityTier] | None = None,
) -> list[Document]:
    """All documents the LM is trained on: fact sentences, biographies, binding documents.

    ``binding_fraction`` sets the number of binding documents (see
    :func:`binding_documents`) relative to the number of fact sentences. Each fact sentence is
    followed by up to ``max_continuation`` (uniformly 0 to that many) biography sentences about
    the same entity's other facts, so that the LM learns to keep writing about an entity after a
    prompt instead of stopping after one sentence.

    With popularity ``tiers`` (see :mod:`remedi.toy.popularity`; the world's entities carry
    their tier), an entity's tier sets its exposure: each of its facts is stated with each of
    the relation's first ``templates`` training templates with the tier's
    ``mention_probability`` (:func:`popularity.stated_templates`), each sentence ``repeats``
    times, continued only in
    tiers with ``continuations``; it has its first ``biographies`` biographies; and the binding
    documents' queries about a memorised fact pick entities in proportion to their fact
    sentences (and, with ``binding.correction_half``, a misstated fact is corrected the more
    often, the more sentences state it). Without tiers every entity is exposed alike (and the
    corpus is as it always was).
    """
    rng = random.Random(world.seed)
    facts = {entity.name: entity.facts for entity in world.entities}
    tier_by_entity = popularity.tier_of(world, tiers) if tiers is not None else None
    stated = (
        popularity.stated_templates(world, tier_by_entity) if tier_by_entity is not None else None
    )
    documents = []
    for prompt in fact_prompts(world, heldout=False):
        repeats, continuation = 1, max_continuation
        if tier_by_entity is not None and stated is not None:
            tier = tier_by_entity[prompt.entity]
            if prompt.template not in stated[prompt.entity, prompt.relation_id]:
                continue
            repeats = tier.repeats
            continuation = max_continuation if tier.continuations else 0
        for _ in range(repeats):
            sentences = [fact_sentence(prompt.template, prompt.entity, prompt.value)]
            others = [rid for rid in facts[prompt.entity] if rid != prompt.relation_id]
            for relation_id in rng.sample(others, rng.randint(0, min(continuation, len(others)))):
                phrasing = rng.choice(world.relation(relation_id).biography_sentences)
                sentences.append(
                    phrasing.format(subject=prompt.entity, value=facts[prompt.entity][relation_id])
                )
            documents.append(Document(" ".join(sentences)))
    biographies = [
        Document(text)
        for name, texts in world.biographies.items()
        for text in (texts if tier_by_entity is None else texts[: tier_by_entity[name].biographies])
    ]
    count = round(binding_fraction * len(documents))
    weights = popularity.exposure_weights(world, tier_by_entity)
    counts = (
        popularity.sentence_counts(stated, tier_by_entity)
        if stated is not None and tier_by_entity is not None
        else None
    )
    return documents + biographies + binding_documents(world, count, binding, weights, counts)


@dataclass(frozen=True)
class BindingSettings:
    """How binding documents are drawn (see :func:`binding_documents`)."""

    invented_subject_fraction: float = 0.4
    """Share of documents about a person who is not in the world (nothing memorised to copy)."""
    true_value_fraction: float = 0.2
    """Share of stated values about world entities that are their memorised value."""
    max_statements: int = 2
    """Facts stated about the subject (of different relations), 1 to this many."""
    max_distractors: int = 2
    """Sentences about other people, 0 to this many, placed between statements and the query."""
    same_relation_distractor_fraction: float = 0.7
    """Share of distractors stating the queried relation (so that only the name tells apart)."""
    unstated_query_fraction: float = 0.2
    """Share of queries about a world entity's fact the context did not state (memorised)."""
    num_invented_names: int = 400
    correction_half: float | None = None
    """Misstatements of well-known facts are contradicted: when a document states a value other
    than a world entity's memorised one and then queries it, the answer is the memorised value
    with probability ``n / (n + correction_half)``, where ``n`` is the number of the corpus's
    fact sentences that state the fact (:func:`popularity.fact_sentence_counts`; so half of the
    misstatements of a fact stated ``correction_half`` times are corrected). Text that misstates a famous person's birthplace is usually set right; a
    misstatement of an obscure fact stands. None: every query is answered by the stated value
    (the default worlds). Needs the facts' sentence counts (a world with popularity tiers)."""


def binding_documents(
    world: World,
    count: int,
    settings: BindingSettings | None = None,
    entity_weights: Sequence[float] | None = None,
    fact_counts: Mapping[tuple[str, str], int] | None = None,
) -> list[Document]:
    """``count`` documents that state facts in context and then query one of them.

    ``entity_weights`` (one per world entity) weight the choice of the entity whose memorised
    fact an unstated query asks about (None: uniform), the one sentence of a binding document
    that trains a memorised fact. ``fact_counts`` (sentences stating each fact, by entity name
    and relation id) set how often a misstated fact is corrected when the settings'
    ``correction_half`` is set.

    E.g. ``"Giguk Dodair lives in Tokyo. Mira Talovan works as a baker. Giguk Dodair lives in
    the city of"`` + ``" Tokyo."``; only the final sentence is scored. Only training templates
    and biography phrasings are used, so held-out templates stay out of LM training.
    """
    if count <= 0:
        return []
    settings = settings or BindingSettings()
    if settings.correction_half is not None and fact_counts is None:
        raise errors.UsageError(
            "BindingSettings.correction_half needs the facts' sentence counts (fact_counts), "
            "which only a world with popularity tiers has; give the world tiers or leave "
            "correction_half None"
        )
    if settings.correction_half is not None and not settings.correction_half > 0:
        raise errors.UsageError(
            f"BindingSettings.correction_half must be > 0 (the fact sentences at which half of "
            f"the misstatements are corrected), got {settings.correction_half}"
        )
    rng = random.Random(world.seed + 1)
    invented = _invented_people(world, rng, settings.num_invented_names)
    relation_ids = [r.relation_id for r in world.relations]
    documents = []
    for _ in range(count):
        stated: dict[str, dict[str, str]] = {}
        use_invented = rng.random() < settings.invented_subject_fraction
        subject = rng.choice(invented if use_invented else world.entities)
        statement_relations = rng.sample(
            relation_ids, rng.randint(1, min(settings.max_statements, len(relation_ids)))
        )
        statements = [
            _statement(world, subject, rid, _stated_value(world, subject, rid, settings, rng), rng)
            for rid in statement_relations
        ]
        stated[subject.name] = {rid: value for rid, value, _ in statements}
        queried = rng.choice(statement_relations)
        distractors = []
        for _ in range(rng.randint(0, settings.max_distractors)):
            other = rng.choice(invented if rng.random() < 0.5 else world.entities)
            if other.name in stated:
                continue
            if rng.random() < settings.same_relation_distractor_fraction:
                rid = queried
            else:
                rid = rng.choice(relation_ids)
            value = _stated_value(world, other, rid, settings, rng)
            distractors.append(_statement(world, other, rid, value, rng))
            stated[other.name] = {rid: value}
        sentences = [text for _, _, text in statements]
        sentences += [text for _, _, text in distractors]
        query_subject, query_value = subject, stated[subject.name][queried]
        if rng.random() < settings.unstated_query_fraction:
            query_subject, queried = _unstated_fact(
                world, stated, relation_ids, rng, entity_weights
            )
            query_value = query_subject.facts[queried]
        elif settings.correction_half is not None and fact_counts is not None:
            query_value = _corrected_value(
                subject, queried, query_value, fact_counts, settings.correction_half, rng
            )
        template = rng.choice(world.relation(queried).train_templates)
        context = " ".join(sentences)
        query = fact_sentence(template, query_subject.name, query_value)
        documents.append(Document(f"{context} {query}", scored_from=len(context) + 1))
    return documents


def _corrected_value(
    subject: Entity,
    relation_id: str,
    stated_value: str,
    fact_counts: Mapping[tuple[str, str], int],
    correction_half: float,
    rng: random.Random,
) -> str:
    """The value a query about a stated fact is answered with: the memorised one, if the stated
    value misstates it and the draw corrects it (see ``BindingSettings.correction_half``)."""
    memorised = subject.facts.get(relation_id)
    if memorised is None or memorised == stated_value:
        return stated_value
    sentences = fact_counts.get((subject.name, relation_id), 0)
    return memorised if rng.random() < sentences / (sentences + correction_half) else stated_value


def _invented_people(world: World, rng: random.Random, count: int) -> list[Entity]:
    """People outside the world, with names from fresh first and last names and no facts."""
    taken = {part for entity in world.entities for part in entity.name.split()}
    parts = [name for name in invent_names(rng, 2 * count, syllables=(2, 3)) if name not in taken]
    half = len(parts) // 2
    return [
        Entity(f"{first} {last}", {}, "train")
        for first, last in zip(parts[:half], parts[half : 2 * half], strict=True)
    ]


def _stated_value(
    world: World, entity: Entity, relation_id: str, settings: BindingSettings, rng: random.Random
) -> str:
    true_value = entity.facts.get(relation_id)
    if true_value is not None and rng.random() < settings.true_value_fraction:
        return true_value
    return rng.choice([v for v in world.relation(relation_id).values if v != true_value])


def _statement(
    world: World, entity: Entity, relation_id: str, value: str, rng: random.Random
) -> tuple[str, str, str]:
    """(relation, value, sentence) stating ``value`` with a training template or a biography
    phrasing."""
    relation = world.relation(relation_id)
    if rng.random() < 0.5:
        text = rng.choice(relation.biography_sentences).format(subject=entity.name, value=value)
    else:
        text = fact_sentence(rng.choice(relation.train_templates), entity.name, value)
    return relation_id, value, text


def _unstated_fact(
    world: World,
    stated: dict[str, dict[str, str]],
    relation_ids: list[str],
    rng: random.Random,
    entity_weights: Sequence[float] | None = None,
) -> tuple[Entity, str]:
    """A world entity and a relation whose value the context neither stated nor implied."""
    linked = {(i.if_relation, i.then_relation) for i in world.implications}
    linked |= {(b, a) for a, b in linked}
    while True:
        if entity_weights is None:
            entity = rng.choice(world.entities)
        else:
            entity = rng.choices(world.entities, weights=entity_weights)[0]
        relation_id = rng.choice(relation_ids)
        told = stated.get(entity.name, {})
        if relation_id not in told and not any((rid, relation_id) in linked for rid in told):
            return entity, relation_id


def tokenizer_texts(world: World) -> list[str]:
    """Text to train the BPE tokenizer on.

    Every template and biography phrasing is filled with every value (so template words and
    values become whole tokens), but each first or last name appears only twice (at the start of
    a text and after a space): names stay split into several sub-word tokens, as the names of
    rare entities are in real LMs.
    """
    texts: list[str] = []
    placeholder = "Someone"
    for relation in world.relations:
        texts.extend(_relation_texts(relation, placeholder))
    texts.append(BIOGRAPHY_HEADER + placeholder + " is.")
    parts = sorted({part for entity in world.entities for part in entity.name.split()})
    texts.extend(f"{part} {part}." for part in parts)
    return texts


def _relation_texts(relation: Relation, subject: str) -> list[str]:
    texts = []
    for value in relation.values:
        for template in (*relation.train_templates, *relation.heldout_templates):
            texts.append(fact_sentence(template, subject, value))
        for sentence in relation.biography_sentences:
            texts.append(sentence.format(subject=subject, value=value))
    return texts
