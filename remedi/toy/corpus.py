"""The toy LM's training text: one sentence per (fact, training template), plus biographies."""

from __future__ import annotations

import random
from dataclasses import dataclass

from remedi.toy.world import BIOGRAPHY_HEADER, Relation, World


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


def fact_sentences(world: World) -> list[str]:
    """One training sentence per fact and training template (held-out templates never appear)."""
    return [
        fact_sentence(p.template, p.entity, p.value) for p in fact_prompts(world, heldout=False)
    ]


def training_documents(world: World, max_continuation: int = 0) -> list[str]:
    """All documents the LM is trained on: fact sentences, then biographies.

    Each fact sentence is followed by up to ``max_continuation`` (uniformly 0 to that many)
    biography sentences about the same entity's other facts, so that the LM learns to keep
    writing about an entity after a prompt instead of stopping after one sentence.
    """
    rng = random.Random(world.seed)
    facts = {entity.name: entity.facts for entity in world.entities}
    documents = []
    for prompt in fact_prompts(world, heldout=False):
        sentences = [fact_sentence(prompt.template, prompt.entity, prompt.value)]
        others = [rid for rid in facts[prompt.entity] if rid != prompt.relation_id]
        for relation_id in rng.sample(others, rng.randint(0, min(max_continuation, len(others)))):
            phrasing = rng.choice(world.relation(relation_id).biography_sentences)
            sentences.append(
                phrasing.format(subject=prompt.entity, value=facts[prompt.entity][relation_id])
            )
        documents.append(" ".join(sentences))
    biographies = [text for texts in world.biographies.values() for text in texts]
    return documents + biographies


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
