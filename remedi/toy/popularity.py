"""Graded popularity: how often the toy LM's training text mentions each entity.

Real entities follow a long tail: a few are written about everywhere, most are mentioned once
or twice, so an LM knows the facts of popular entities firmly and those of rare ones weakly or
not at all. The default toy worlds state every fact equally often (each training template
once), so their LM knows ~every fact and its hidden state of an entity has nothing to reveal
about whether it will recall it. A long-tail world (``"toy-longtail"`` in
:data:`remedi.toy.build.SIZES`) gives each entity a popularity tier, drawn with a seed
independent of the world's own draws, and the tier sets the entity's exposure in the corpus
(:func:`remedi.toy.corpus.training_documents`): how many of each relation's training templates
state each of its facts, how many times, whether its fact sentences continue with its other
facts, and how many biographies it has. The long-tail world's binding documents also correct
a misstated fact the more often, the more often the corpus states it
(``corpus.BindingSettings.correction_half``): text that contradicts a well-known fact is usually
set right, text about an obscure one is not, so the LM holds to the facts it knows well against
a context that contradicts them and follows contexts about facts it barely knows, as real LMs
resist contexts about popular entities more. Nothing else about the entity changes (names,
facts, split), and no label is engineered: what the LM knows, and how firmly it holds to it,
follows from how often it read it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from remedi import errors
from remedi.toy.world import World

POPULARITY_SEED_OFFSET = 7919
"""Added to the world's seed for the tier draw, so that it consumes none of the world's draws."""


@dataclass(frozen=True)
class PopularityTier:
    """One popularity tier: the share of entities in it and their exposure in the corpus."""

    name: str
    share: float
    """Share of the world's entities in this tier (the tiers' shares sum to 1)."""
    templates: int
    """Training templates (the relation's first ones) that may state each fact of the entity."""
    mention_probability: float = 1.0
    """Chance that each of those templates states the fact (drawn per fact and template, so
    that within a tier some facts are stated more often than others, and some never)."""
    repeats: int = 1
    """Times each stated fact sentence occurs in the corpus."""
    biographies: int = 0
    """Biographies of the entity in the corpus (at most the world's biographies per entity)."""
    continuations: bool = False
    """Whether the entity's fact sentences continue with its other facts (see
    :func:`remedi.toy.corpus.training_documents`)."""

    @property
    def fact_sentences(self) -> float:
        """Expected fact sentences per fact of an entity of this tier."""
        return self.templates * self.mention_probability * self.repeats


LONG_TAIL_TIERS: tuple[PopularityTier, ...] = (
    PopularityTier("head", 0.1, templates=4, repeats=6, biographies=2, continuations=True),
    PopularityTier("torso", 0.2, templates=4, repeats=3, biographies=2, continuations=True),
    PopularityTier("tail", 0.3, templates=4, mention_probability=0.5),
    PopularityTier("rare", 0.4, templates=4, mention_probability=0.1),
)
"""The long-tail world's tiers, most popular first: 24, 12, 2 and 0.4 fact sentences per fact
on average (each entity of the default world has 4). A tail fact is stated in no sentence with
probability 0.06, a rare one with probability 0.66. Earlier designs, measured: tail and rare
facts stated by exactly 2 and 1 templates left the LM knowing 78% of even the rare facts;
12/4/1/0.4 sentences made rare facts unknown, but REMEDI's directions read the known facts of
only the 12-sentence tier (75% vs 54% for 4 sentences)."""


KNOWN_TIER_SETS: tuple[tuple[PopularityTier, ...], ...] = (LONG_TAIL_TIERS,)
"""Tier sets a built world can name (its entities store only their tier's name)."""


def world_tiers(world: World) -> tuple[PopularityTier, ...] | None:
    """The tiers a built world's entities were given, found by their names among
    :data:`KNOWN_TIER_SETS`; None for a world without tiers (the default worlds).

    Raises:
        UsageError: The entities name tiers of no known set.
    """
    names = {entity.popularity for entity in world.entities}
    if names == {None}:
        return None
    for tiers in KNOWN_TIER_SETS:
        if names <= {tier.name for tier in tiers}:
            return tiers
    raise errors.UsageError(
        f"the world's entities name popularity tiers {sorted(map(str, names))}, which match no "
        "tier set in remedi.toy.popularity.KNOWN_TIER_SETS; register the set the world was "
        "built with there"
    )


def check_tiers(tiers: Sequence[PopularityTier]) -> None:
    """Raise a :class:`~remedi.errors.UsageError` naming the problem if ``tiers`` are unusable."""
    if not tiers:
        raise errors.UsageError("popularity tiers must not be empty; pass None for no tiers")
    names = [tier.name for tier in tiers]
    if len(set(names)) != len(names):
        raise errors.UsageError(f"popularity tier names must be distinct, got {names}")
    if abs(sum(tier.share for tier in tiers) - 1) > 1e-9:
        raise errors.UsageError(
            f"popularity tier shares must sum to 1, got {sum(tier.share for tier in tiers)}"
        )
    for tier in tiers:
        if (
            tier.share < 0
            or tier.templates < 0
            or tier.repeats < 1
            or tier.biographies < 0
            or not 0 <= tier.mention_probability <= 1
        ):
            raise errors.UsageError(
                f"popularity tier {tier.name!r}: share, templates and biographies must be >= 0, "
                f"repeats >= 1 and mention_probability in [0, 1], got {tier}"
            )


def assign_popularity(world: World, tiers: Sequence[PopularityTier]) -> None:
    """Give each entity of ``world`` a tier (``Entity.popularity``), in place.

    Tier sizes are the shares rounded (the last tier takes the rest); which entity falls in
    which tier is a seeded shuffle independent of the entity's facts and split.
    """
    check_tiers(tiers)
    order = list(range(len(world.entities)))
    random.Random(world.seed + POPULARITY_SEED_OFFSET).shuffle(order)
    start = 0
    for index, tier in enumerate(tiers):
        size = len(order) - start if index == len(tiers) - 1 else round(tier.share * len(order))
        for position in order[start : start + size]:
            world.entities[position].popularity = tier.name
        start += size


def tier_of(world: World, tiers: Sequence[PopularityTier]) -> dict[str, PopularityTier]:
    """Each entity's tier by name.

    Raises:
        UsageError: An entity has no tier or one not in ``tiers`` (the world was not built
            with these tiers).
    """
    by_name = {tier.name: tier for tier in tiers}
    result = {}
    for entity in world.entities:
        if entity.popularity not in by_name:
            raise errors.UsageError(
                f"entity {entity.name!r} has popularity {entity.popularity!r}, not one of "
                f"{sorted(by_name)}; assign tiers with assign_popularity first"
            )
        result[entity.name] = by_name[entity.popularity]
    return result


def stated_templates(
    world: World, tiers: Mapping[str, PopularityTier]
) -> dict[tuple[str, str], tuple[str, ...]]:
    """The training templates that state each fact (entity name, relation id) in the corpus:
    of the relation's first ``templates`` ones, each with the tier's ``mention_probability``
    (a seeded draw independent of the world's and the corpus's own draws)."""
    rng = random.Random(world.seed + POPULARITY_SEED_OFFSET + 1)
    stated = {}
    for entity in world.entities:
        tier = tiers[entity.name]
        for relation in world.relations:
            candidates = relation.train_templates[: tier.templates]
            stated[entity.name, relation.relation_id] = tuple(
                template
                for template in candidates
                if tier.mention_probability >= 1 or rng.random() < tier.mention_probability
            )
    return stated


def fact_sentence_counts(
    world: World, tiers: Sequence[PopularityTier]
) -> dict[tuple[str, str], int]:
    """How many fact sentences state each fact (entity name, relation id) in the corpus."""
    by_name = tier_of(world, tiers)
    return sentence_counts(stated_templates(world, by_name), by_name)


def sentence_counts(
    stated: Mapping[tuple[str, str], Sequence[str]], tiers: Mapping[str, PopularityTier]
) -> dict[tuple[str, str], int]:
    """Fact sentences per fact, from the templates that state it (:func:`stated_templates`) and
    the entity's tier by name (each stated template is repeated ``repeats`` times)."""
    return {fact: len(templates) * tiers[fact[0]].repeats for fact, templates in stated.items()}


def exposure_weights(
    world: World, tiers: Mapping[str, PopularityTier] | None
) -> list[float] | None:
    """Each entity's fact sentences per fact (how often the corpus mentions it), in world order;
    None without tiers (every entity equally often)."""
    if tiers is None:
        return None
    return [float(tiers[entity.name].fact_sentences) for entity in world.entities]
