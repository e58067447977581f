"""A canonical-examples task made from the toy world, in the seed's JSONL line formats.

``toy_works_for`` updates people's employers, like the seed's company-CEO task updates CEOs:
the canonical examples state the new employer with a template the toy LM was trained on
("{} works for"); the evaluation set asks with held-out templates, some after a sentence of
the person's other facts; hard negatives are facts the edit must keep (the same people's other
relations, and other people's employers); the unconditional texts state the new facts; the
general degradation texts are biographies of people no edit touches. Validation and test
edit disjoint sets of people. Files: ``<root>/toy_works_for/split/<stem>-{val,test}.jsonl``
and ``<root>/val100{-val,,-short}.jsonl``, the layout of the real ``canonical_examples/``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from remedi import errors, io
from remedi.data.canonical import (
    CANONICAL_TASKS,
    GENERAL_FILES,
    KL_TEXTS_SHORT,
    CanonicalTask,
    TaskFile,
    register_task,
)
from remedi.toy.world import Entity, World

EMPLOYER = "P108"
"""The toy relation the task edits."""

TOY_WORKS_FOR = CanonicalTask(
    name="toy_works_for",
    folder="toy_works_for",
    files={
        "train": TaskFile("toy_works_for_train", "suffix", ("entity", "employer"), "entity"),
        "eval": TaskFile("toy_works_for_eval", "suffix", ("entity", "employer")),
        "hard_negative": TaskFile("toy_works_for_hard_neg", "suffix", ("entity",)),
        "unconditional": TaskFile("toy_works_for_unconditional", "text"),
    },
    loss_type="good",
    threshold=math.log(5),
    description="toy world: a person's new employer",
    # Biographies of people in neither split nor the general texts (export_toy_canonical).
    kl_texts=KL_TEXTS_SHORT,
)
if TOY_WORKS_FOR.name not in CANONICAL_TASKS:
    register_task(TOY_WORKS_FOR)

OTHER_RELATIONS = ("P551", "P106")
"""Relations whose facts about the edited people are hard negatives (residence, occupation)."""


def _line(prefix: str, suffix: str, **fields: str) -> dict[str, str]:
    return {"prefix": prefix, "suffix": suffix, **fields}


def works_for_split(
    world: World, edited: Sequence[Entity], others: Sequence[Entity], rng: random.Random
) -> dict[str, list[dict[str, str]]]:
    """The four role files of one split: ``edited`` people get a new employer."""
    relation = world.relation(EMPLOYER)
    train, evaluation, hard, unconditional = [], [], [], []
    for person in edited:
        old = person.facts[EMPLOYER]
        new = rng.choice([value for value in relation.values if value != old])
        statement = relation.train_templates[0].format(person.name) + f" {new}."
        fields = {"entity": person.name, "employer": new, "statement": statement}
        train.append(_line(relation.train_templates[0].format(person.name), f" {new}", **fields))
        background = " ".join(
            world.relation(rid).train_templates[0].format(person.name) + f" {person.facts[rid]}."
            for rid in OTHER_RELATIONS
            if rid in person.facts
        )
        for template in relation.heldout_templates:
            prompt = template.format(person.name)
            evaluation.append(_line(prompt, f" {new}", **fields))
            evaluation.append(_line(f"{background} {prompt}", f" {new}", **fields))
            unconditional.append({"text": f"{prompt} {new}."})
        for rid in OTHER_RELATIONS:
            if rid in person.facts:
                other = world.relation(rid)
                hard.append(
                    _line(
                        other.train_templates[0].format(person.name),
                        f" {person.facts[rid]}",
                        entity=person.name,
                    )
                )
    for person in others:
        hard.append(
            _line(
                relation.heldout_templates[0].format(person.name),
                f" {person.facts[EMPLOYER]}",
                entity=person.name,
            )
        )
    return {
        "train": train,
        "eval": evaluation,
        "hard_negative": hard,
        "unconditional": unconditional,
    }


def biography_texts(world: World, people: Sequence[Entity]) -> list[dict[str, str]]:
    """General text: every biography of ``people`` (written by the toy world's builder)."""
    return [{"text": text} for person in people for text in world.biographies.get(person.name, [])]


def export_toy_canonical(
    world: World, directory: Path, seed: int = 0, people_per_split: int = 30
) -> dict[str, int]:
    """Write ``toy_works_for`` (val and test) and the general texts under ``directory``.

    Returns the number of lines written per file name.
    """
    people = [person for person in world.entities if EMPLOYER in person.facts]
    needed = 2 * people_per_split + 3 * people_per_split // 2
    if len(people) < needed:
        raise errors.UsageError(
            f"the toy world has {len(people)} people with an employer; {needed} are needed for "
            f"{people_per_split} per split; lower people_per_split"
        )
    rng = random.Random(seed)
    order = list(people)
    rng.shuffle(order)
    n = people_per_split
    val_edit, test_edit = order[:n], order[n : 2 * n]
    rest = order[2 * n :]
    half = max(1, n // 2)
    val_others, test_others, short_people = (
        rest[:half],
        rest[half : 2 * half],
        rest[2 * half : 3 * half],
    )
    unedited_rest = rest[3 * half :]
    files: dict[Path, list[dict[str, Any]]] = {}
    split_dir = Path(directory) / TOY_WORKS_FOR.folder / "split"
    for split, edited, others in (("val", val_edit, val_others), ("test", test_edit, test_others)):
        for role, lines in works_for_split(world, edited, others, rng).items():
            stem = TOY_WORKS_FOR.files[role].stem  # type: ignore[index]
            files[split_dir / f"{stem}-{split}.jsonl"] = lines
    # General texts: biographies of people no split edits (val and test halves, and a few
    # for the KL regulariser).
    middle = len(unedited_rest) // 2
    files[Path(directory) / GENERAL_FILES["val"]] = biography_texts(world, unedited_rest[:middle])
    files[Path(directory) / GENERAL_FILES["test"]] = biography_texts(world, unedited_rest[middle:])
    files[Path(directory) / GENERAL_FILES["short"]] = biography_texts(world, short_people)
    counts = {}
    for path, lines in files.items():
        io.write_text(path, "".join(json.dumps(line) + "\n" for line in lines))
        counts[str(path.relative_to(directory))] = len(lines)
    return counts


def load_world(path: Path) -> World:
    """The toy world saved by its builder (``world.json``)."""
    data: Mapping[str, Any] = io.read_json(path, "toy world")
    return World.from_json(data)
