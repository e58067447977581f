"""Toy general-ability tasks, written in the real task files' formats.

So that "what do many edits do to the model's other abilities" has a real answer on the toy LM,
three tasks are exported from the world, each in the format of one of the harms paper's files
(and read back by the same loaders, :mod:`remedi.data.general_tasks`):

- ``test-OpenDomainQA.jsonl`` (NQ format): recall of facts about entities that are never
  edited (the question is a held-out phrasing of the fact, the answer its value, no passage);
- ``test-NLI.tsv`` (RTE format): a toy entailment over the world's implications: the premise
  states an invented person's value of an implication's first relation, the hypothesis the
  implied value (``entailment``) or another value (``not_entailment``) of the second;
- ``test-summarization.json`` (SAMSum format): held-out toy text, a never-edited entity's
  biography split after its first sentence (``dialogue``) with the rest as ``summary``; the
  harm evaluation reads the rest's per-token log-likelihood (perplexity).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

from remedi import io
from remedi.toy.world import World, invent_names

TOY_TASK_FILES = {
    "toy_recall": "test-OpenDomainQA.jsonl",
    "toy_entailment": "test-NLI.tsv",
    "toy_text": "test-summarization.json",
}


def recall_records(world: World, excluded: Collection[str], limit: int) -> list[dict[str, Any]]:
    """NQ-format questions about the facts of entities not in ``excluded`` (in world order)."""
    records = []
    for entity in world.entities:
        if entity.name in excluded:
            continue
        for relation in world.relations:
            value = entity.facts.get(relation.relation_id)
            if value is None:
                continue
            template = relation.heldout_templates[0] if relation.heldout_templates else None
            template = template or relation.train_templates[0]
            records.append(
                {"question": template.format(entity.name), "answer": [value], "output": [""]}
            )
            if len(records) >= limit:
                return records
    return records


def entailment_rows(world: World, count: int, seed: int) -> list[dict[str, str]]:
    """RTE-format pairs over the world's implications, half entailed, about invented people."""
    rng = random.Random(seed)
    known = {entity.name for entity in world.entities}
    names = [name for name in invent_names(rng, count * 2, (2, 3)) if name not in known]
    rows: list[dict[str, str]] = []
    for index in range(min(count, len(names))):
        implication = world.implications[index % len(world.implications)]
        premise_relation = world.relation(implication.if_relation)
        implied_relation = world.relation(implication.then_relation)
        cause = rng.choice(sorted(implication.mapping))
        implied = implication.mapping[cause]
        entailed = index % 2 == 0
        if entailed:
            value = implied
        else:
            value = rng.choice([v for v in implied_relation.values if v != implied])
        premise = premise_relation.train_templates[0].format(names[index]) + f" {cause}."
        hypothesis = implied_relation.train_templates[0].format(names[index]) + f" {value}."
        rows.append(
            {
                "index": str(index),
                "sentence1": premise,
                "sentence2": hypothesis,
                "label": "entailment" if entailed else "not_entailment",
            }
        )
    return rows


def text_records(world: World, excluded: Collection[str], limit: int) -> list[dict[str, str]]:
    """SAMSum-format texts: a never-edited entity's biography split after its first sentence."""
    records = []
    for entity in world.entities:
        if entity.name in excluded:
            continue
        for number, biography in enumerate(world.biographies.get(entity.name, [])):
            first, _, rest = biography.partition(". ")
            if not rest:
                continue
            records.append(
                {"id": f"{entity.name}/{number}", "dialogue": first + ".", "summary": rest}
            )
            break
        if len(records) >= limit:
            break
    return records


def export_toy_tasks(
    world: World, directory: Path, excluded: Collection[str], limit: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Write the three toy tasks under ``directory`` in the real files' formats; returns each
    task's file. ``excluded`` are the entities that may be edited (never asked about)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {task: directory / name for task, name in TOY_TASK_FILES.items()}
    lines = "".join(json.dumps(r) + "\n" for r in recall_records(world, excluded, limit))
    io.write_text(paths["toy_recall"], lines)
    rows = entailment_rows(world, limit, seed)
    with paths["toy_entailment"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["index", "sentence1", "sentence2", "label"], delimiter="\t"
        )
        writer.writeheader()
        writer.writerows(rows)
    io.write_json(paths["toy_text"], text_records(world, excluded, limit))
    return paths
