"""Which samples an evaluation takes: a split of the editors' training run, or the reference's rows.

Every evaluation script takes ``--split`` (:data:`SPLITS`):

- ``test`` (the default): the training run's held-out split, samples about entities that the
  editors never saw in training or early stopping (:func:`remedi.training.split_samples`);
  without a run (baselines alone), every sample of the file;
- ``validation``: the run's early-stopping split, to choose settings on (a layer sweep) without
  looking at the test split; no entity of it is in the test split;
- ``reference``: the rows the REMEDI reference evaluates, rows 5,000-9,999 of the file, or with
  ``--small`` rows 5,000-5,999 (:mod:`remedi.data.splits` says what a row is for each dataset).

The reference's rows are held out from the reference's own training rows (0-4,999), not from our
runs', which draw their training samples from the whole file by entity: evaluated on them, our
editors meet samples they were trained on and entities they saw. :func:`select_split` counts both,
logs a warning, and puts the counts in the notes of the evaluation's table.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from remedi import data, errors, training

logger = logging.getLogger(__name__)

SPLITS = ("test", "validation", "reference")
"""The values of ``--split``; ``test`` is the default."""
DEFAULT_SPLIT = "test"


@dataclass(frozen=True)
class TrainingOverlap:
    """How much of an evaluation the editors' training run has seen."""

    evaluated: int
    trained: int
    """Evaluated samples in the run's training split: the editors were fitted on them."""
    early_stopping: int
    """Evaluated samples in the run's validation split (early stopping chose the editor on them)."""
    shared_entity: int
    """Other evaluated samples whose entity is one of those two splits' entities."""

    @property
    def any(self) -> bool:
        return bool(self.trained or self.early_stopping or self.shared_entity)

    def describe(self) -> str:
        return (
            f"of {self.evaluated} evaluated samples, {self.trained} were in the editors' "
            f"training split, {self.early_stopping} in their validation (early-stopping) split, "
            f"and {self.shared_entity} more share an entity with those"
        )


@dataclass(frozen=True)
class EvaluationSplit:
    """The samples an evaluation takes (``ids``, in order) and what they are, in words."""

    name: str
    ids: list[str]
    description: str
    overlap: TrainingOverlap | None = None
    notes: list[str] = field(default_factory=list)
    """What the evaluation's table says about its samples."""


def training_overlap(
    record: training.RunRecord, ids: Sequence[str], entity_of: Mapping[str, str]
) -> TrainingOverlap:
    """How many of ``ids`` the run at ``record`` trained on, stopped early on, or shares an entity
    with (``entity_of``: sample id -> entity, for every sample of the file)."""
    trained, early = set(record.split.train), set(record.split.validation)
    seen_entities = {entity_of[i] for i in trained | early if i in entity_of}
    in_trained = sum(sample_id in trained for sample_id in ids)
    in_early = sum(sample_id in early for sample_id in ids)
    shared = sum(
        sample_id not in trained
        and sample_id not in early
        and entity_of.get(sample_id) in seen_entities
        for sample_id in ids
    )
    return TrainingOverlap(len(ids), in_trained, in_early, shared)


def check_split_arguments(
    split: str, small: bool, has_run: bool, limit_flag: str = "--max-samples"
) -> None:
    """Refuse the combinations of ``--split``, ``--small`` and ``-e`` that mean nothing.

    Raises:
        UsageError: an unknown split, ``--small`` without ``--split reference``, or a split of a
            training run without the run.
    """
    if split not in SPLITS:
        raise errors.UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if small and split != "reference":
        raise errors.UsageError(
            f"--small takes the reference's 1,000 sweep rows and goes with --split reference "
            f"(here --split {split}); to evaluate fewer samples of this split, pass {limit_flag} N"
        )
    if split == "validation" and not has_run:
        raise errors.UsageError(
            "--split validation selects a training run's split: pass -e EDITORS_DIR too"
        )


def add_arguments(parser: argparse.ArgumentParser, run: str = "-e") -> None:
    """Add ``--split`` and ``--small`` to an evaluation script (``run`` names its run's flag)."""
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=DEFAULT_SPLIT,
        help="samples to evaluate: test (default; the training run's held-out entities, or "
        f"without {run} every sample), validation (the run's early-stopping split, to choose "
        "settings on) or reference (the REMEDI reference's evaluation rows, 5000-9999 of the "
        "file; CounterFact: case ids 5000-9999; not held out from our runs, which warn)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="with --split reference: the reference's --small rows, 5000-5999 (1,000 samples), "
        "the ones its layer sweeps use",
    )


def check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, has_run: bool
) -> None:
    """:func:`check_split_arguments` as a usage error of ``parser``."""
    try:
        limit_flag = "--max-cases" if hasattr(args, "max_cases") else "--max-samples"
        check_split_arguments(args.split, args.small, has_run, limit_flag)
    except errors.UsageError as error:
        parser.error(str(error))


def select_split(
    dataset: str,
    ids: Sequence[str],
    entity_of: Mapping[str, str],
    split: str = DEFAULT_SPLIT,
    record: training.RunRecord | None = None,
    small: bool = False,
    run_directory: Path | None = None,
) -> EvaluationSplit:
    """The samples of ``split`` among a ``dataset`` file's samples (``ids``, in file order;
    ``entity_of`` maps each to its entity), for the editors of the run at ``record`` (None: no
    editors are evaluated). With the reference split and a run, warns (logged, and in the
    notes) when the run has seen some of the samples or their entities."""
    check_split_arguments(split, small, record is not None)
    if split == "reference":
        description = data.describe_reference_split(dataset, small)
        chosen = data.reference_split_ids(dataset, ids, small)
        notes = [f"Samples: {description}."]
        overlap = None
        if record is not None:
            overlap = training_overlap(record, chosen, entity_of)
            if overlap.any:
                where = f" at {run_directory}" if run_directory is not None else ""
                logger.warning(
                    "the reference split is not held out from the editors' training run%s: %s",
                    where,
                    overlap.describe(),
                )
                notes.append(
                    "Not held out from these editors (the reference's rows are held out from "
                    f"the reference's training rows only): {overlap.describe()}."
                )
        return EvaluationSplit(split, chosen, description, overlap, notes)
    if record is None:
        description = "every sample of the file"
        return EvaluationSplit(split, list(ids), description, notes=[f"Samples: {description}."])
    chosen = list(getattr(record.split, split))
    description = {
        "test": "the training run's held-out test split (entities the editors never saw)",
        "validation": "the training run's validation (early-stopping) split",
    }[split]
    return EvaluationSplit(split, chosen, description, notes=[f"Samples: {description}."])


def load_split_samples(
    run_directory: Path,
    split: str = DEFAULT_SPLIT,
    dataset_file: Path | None = None,
    small: bool = False,
) -> tuple[datasets.Dataset, EvaluationSplit]:
    """The samples of ``split`` for the editors of the run at ``run_directory``, read from
    ``dataset_file`` (default: the file the run trained on), and the split's description."""
    record = training.load_run(run_directory)
    file = dataset_file or record.args.dataset_file
    samples = data.load_dataset(
        record.args.dataset, file=Path(file) if file else None, **record.args.dataset_options()
    )
    entity_of = dict(zip(samples["id"], samples["entity"], strict=True))
    chosen = select_split(
        record.args.dataset, samples["id"], entity_of, split, record, small, run_directory
    )
    return data.select_ids(samples, chosen.ids), chosen
