"""What the probe scripts (``scripts.eval_fact_cls``, ``scripts.eval_bias_cls``) share: their
flags, the checks on the editors' training runs, the editor layer, the rows they compute, and
the whole run (:func:`run_probe`); each script says what differs in a :class:`ProbeSuite`.

Both read REMEDI directions from a training run (``-e``), optionally a second run trained on the
randomly initialised LM (``--control-editors-dir``, the Control Model row), and evaluate on the
run's held-out (test) samples, or on another split (``--split``, :mod:`remedi.evaluation.splits`:
the run's validation split, or the reference's rows, which our runs do not hold out).
"""

from __future__ import annotations

import abc
import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import torch

from remedi import cli, editors, env, errors, models, settings, training
from remedi.evaluation import splits
from remedi.evaluation.probing import classification as cls
from remedi.report import tables

logger = logging.getLogger(__name__)

TRAINED_ROWS: dict[str, dict[str, Any]] = {
    "remedi": {},
    "remedi_identity": {"identity": True},
    "control_task": {"control_task": True},
}
"""The rows computed with the trained model's editors (row -> options); the Control Model row
comes from the control run."""


def add_arguments(parser: argparse.ArgumentParser, run_help: str) -> None:
    """Add the flags every probe script takes (``run_help`` describes ``-e``)."""
    cli.add_arguments(parser)
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument("-e", "--editors-dir", type=Path, required=True, help=run_help)
    parser.add_argument(
        "--control-editors-dir",
        type=Path,
        help="training run on the randomly initialised model (the Control Model row; "
        "skipped without it)",
    )
    parser.add_argument("-m", "--model", required=True, help="model name, alias, or directory")
    parser.add_argument(
        "-l", "--layer", type=int, help="editor layer (default: the run's only one)"
    )
    parser.add_argument(
        "-t", "--editor-type", default="linear", help="editor type (default linear)"
    )
    parser.add_argument(
        "--entity-layers",
        type=int,
        nargs="+",
        help="layers to read the entity at (default: the editor layer); the table shows the first",
    )
    parser.add_argument("--dataset-file", type=Path, help="dataset file (default: the run's)")
    parser.add_argument(
        "--max-samples", type=int, help="evaluate only the first N samples of the split"
    )
    splits.add_arguments(parser)
    parser.add_argument("--control-task-seed", type=int, default=cls.DEFAULT_CONTROL_TASK_SEED)
    cli.add_device_arguments(parser, settings.REMEDI)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rerun", action="store_true", help="recompute finished results")
    parser.add_argument(
        "--random",
        action="store_true",
        help="probe the randomly initialised model with its own editors (-e: a --random run)",
    )


def check_run(
    run_dir: Path,
    random_init: bool,
    flag: str,
    dataset: str | None = None,
    train_task: str = "scripts.train_editors",
) -> training.RunRecord:
    """The training run at ``run_dir``, checked to be on ``dataset`` (any if None) and on the
    randomly initialised model exactly when ``random_init``; ``flag`` names it in errors and
    ``train_task`` says how to train the run that is missing."""
    record = training.load_run(run_dir)
    if dataset is not None and record.args.dataset != dataset:
        raise errors.MismatchError(
            f"{flag} {run_dir} was trained on {record.args.dataset!r}; pass a {dataset} run "
            f"({train_task})"
        )
    if record.args.random_init and not random_init:
        raise errors.UsageError(
            f"{flag} {run_dir} was trained on the randomly initialised model; pass it as "
            "--control-editors-dir and the trained model's run as -e (or pass --random)"
        )
    if random_init and not record.args.random_init:
        raise errors.UsageError(
            f"{flag} {run_dir}: the control model needs editors trained on the random model, "
            f"and this run was not; train them with {train_task} --random"
        )
    return record


def check_control_flags(args: argparse.Namespace) -> None:
    """``--random`` probes the control model itself, so a control run on top means nothing."""
    if args.random and args.control_editors_dir is not None:
        raise errors.UsageError(
            "--random already probes the control model: drop --control-editors-dir"
        )


def editor_layer(run_dir: Path, editor_type: str, layer: int | None) -> int:
    """``layer`` if given, else the layer of the run's only ``editor_type`` editor."""
    if layer is not None:
        return layer
    layers = training.list_run_editors(run_dir).get(editor_type, [])
    if len(layers) != 1:
        raise errors.UsageError(
            f"{run_dir} has {editor_type} editors at layers {layers or 'none'}; pass -l LAYER"
        )
    return layers[0]


def split_samples(
    run_dir: Path,
    dataset_file: Path | None,
    max_samples: int | None,
    split: str = splits.DEFAULT_SPLIT,
    small: bool = False,
) -> tuple[list[dict], splits.EvaluationSplit]:
    """The samples of ``split`` for the run's editors (read from ``dataset_file``, default the
    run's own file), the first ``max_samples`` if given, and what they are."""
    loaded, chosen = splits.load_split_samples(run_dir, split, dataset_file, small)
    samples = [dict(row) for row in loaded]
    return (samples if max_samples is None else samples[:max_samples]), chosen


def check_stored_samples(path: Path, result: Any, samples: Sequence[dict]) -> None:
    """Refuse a stored result computed on other samples than ``samples`` (another split or
    ``--max-samples``), so that one experiment never mixes them in a table."""
    stored = [str(sample.id) for sample in getattr(result, "samples", None) or []]
    if stored and stored != [str(sample["id"]) for sample in samples]:
        raise errors.MismatchError(
            f"{path} holds a result on other samples ({len(stored)} stored, {len(samples)} "
            "asked; another --split or --max-samples?): pass --rerun to replace it, or evaluate "
            "under another experiment name (-n)"
        )


def warn_control_overlap(control: training.RunRecord, samples: list[dict]) -> None:
    """Warn when evaluated samples were in the control run's training or validation split."""
    seen = set(control.split.train) | set(control.split.validation)
    overlap = sum(str(sample["id"]) in seen for sample in samples)
    if overlap:
        logger.warning("%d evaluated samples were in the control run's training set", overlap)


def write_summaries(
    experiment_dir: Path, entity_layers: Sequence[int], table_for: Callable[[int], tables.Table]
) -> tuple[tables.Table, tables.TableFiles]:
    """Write ``summary_entity_layer_<L>.*`` for every entity layer and ``summary.*`` for the
    first; return the first layer's table and files (the script shows them)."""
    first: tuple[tables.Table, tables.TableFiles] | None = None
    for entity_layer in entity_layers:
        table = table_for(entity_layer)
        tables.write_table(table, experiment_dir, f"summary_entity_layer_{entity_layer}")
        if first is None:
            first = (table, tables.write_table(table, experiment_dir, "summary"))
    if first is None:
        raise errors.UsageError("no entity layers to summarise; pass --entity-layers")
    return first


ResultT = TypeVar("ResultT")


class ResultStore(Protocol[ResultT]):
    """Where a probe row's result is stored, and how it is read and written."""

    def result_file(self, directory: Path, row: str, entity_layer: int) -> Path: ...

    def read_result(self, path: Path) -> ResultT | None: ...

    def write_result(self, path: Path, result: ResultT) -> None: ...


class ProbeSuite(abc.ABC, Generic[ResultT]):
    """What one probe script computes, stores and tabulates; :func:`run_probe` does the rest.

    ``args`` are the script's parsed flags (:func:`add_arguments` and the script's own);
    ``store`` says where a row's result is and reads and writes it (a results module such as
    :mod:`remedi.evaluation.probing.classification`).
    """

    dataset: str | None = None
    """The dataset the training runs must be on (None: any)."""
    train_task: str = "scripts.train_editors"
    """How to train a missing run, for error messages."""

    def __init__(self, args: argparse.Namespace, store: ResultStore[ResultT]) -> None:
        self.args = args
        self.store = store

    @abc.abstractmethod
    def read_samples(
        self, mt: models.ModelAndTokenizer, samples: list[dict], entity_layers: list[int]
    ) -> Any:
        """What every row of one model reuses (the LM's readings of the samples)."""

    @abc.abstractmethod
    def classify(
        self,
        mt: models.ModelAndTokenizer,
        probe: editors.Editor,
        samples: list[dict],
        readings: Any,
        *,
        entity_layer: int,
        control_task: bool,
        random_init: bool,
    ) -> ResultT:
        """One row's result: ``probe``'s directions classify ``samples``."""

    @abc.abstractmethod
    def describe(self, result: ResultT) -> str:
        """A result's metrics in one line, for the log."""

    @abc.abstractmethod
    def table(
        self, results: dict[str, ResultT], record: training.RunRecord, entity_layer: int
    ) -> tables.Table:
        """The summary table of one entity layer (``results``: row -> result)."""

    def check_run(self, run_dir: Path, random_init: bool, flag: str) -> training.RunRecord:
        """:func:`check_run` with this suite's dataset and training task."""
        return check_run(run_dir, random_init, flag, self.dataset, self.train_task)


def _evaluate_rows(
    suite: ProbeSuite[ResultT],
    run_dir: Path,
    rows: dict[str, dict[str, Any]],
    samples: list[dict],
    layer: int,
    entity_layers: list[int],
    experiment_dir: Path,
    device: str,
    random_init: bool,
) -> None:
    """Compute the missing results of ``rows`` (row -> options) on one model."""
    args, store = suite.args, suite.store
    todo = []
    for row in rows:
        for entity_layer in entity_layers:
            path = store.result_file(experiment_dir, row, entity_layer)
            stored = None if args.rerun else store.read_result(path)
            if stored is None:
                todo.append((row, entity_layer))
            else:
                check_stored_samples(path, stored, samples)
    if not todo:
        return
    mt = models.load_model(
        args.model,
        device=device,
        dtype=args.dtype,
        random_init=random_init,
        experiment=settings.REMEDI,
    )
    editor = training.load_run_editor(run_dir, layer, args.editor_type, mt)
    readings = suite.read_samples(mt, samples, entity_layers)
    for row, entity_layer in todo:
        options = rows[row]
        probe = cls.identity_editor(mt, editor) if options.get("identity") else editor
        result = suite.classify(
            mt,
            probe,
            samples,
            readings,
            entity_layer=entity_layer,
            control_task=bool(options.get("control_task")),
            random_init=random_init,
        )
        store.write_result(store.result_file(experiment_dir, row, entity_layer), result)
        logger.info("%s, entity layer %d: %s", row, entity_layer, suite.describe(result))


class ProbeSummary(NamedTuple):
    """Where a probe run wrote, and its first entity layer's table and files (for the script)."""

    experiment_dir: Path
    table: tables.Table
    files: tables.TableFiles

    def report(self) -> str:
        """What a probe script prints: the table in Markdown, then where the files are."""
        files = self.files
        return (
            f"{tables.markdown(self.table)}\n"
            f"results: {self.experiment_dir}\n"
            f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})"
        )


def run_probe(suite: ProbeSuite[Any]) -> ProbeSummary:
    """Run a probe script: check the runs, compute the missing rows of the trained model (and of
    the control model, given its run), write the summaries."""
    args = suite.args
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = suite.check_run(args.editors_dir, args.random, "-e")
    check_control_flags(args)
    layer = editor_layer(args.editors_dir, args.editor_type, args.layer)
    entity_layers = list(dict.fromkeys(args.entity_layers or [layer]))
    samples, chosen = split_samples(
        args.editors_dir, args.dataset_file, args.max_samples, args.split, args.small
    )
    experiment_dir = env.results_dir() / args.name

    _evaluate_rows(
        suite,
        args.editors_dir,
        TRAINED_ROWS,
        samples,
        layer,
        entity_layers,
        experiment_dir,
        device,
        random_init=args.random,
    )
    if args.control_editors_dir is not None:
        control = suite.check_run(args.control_editors_dir, True, "--control-editors-dir")
        warn_control_overlap(control, samples)
        _evaluate_rows(
            suite,
            args.control_editors_dir,
            {"control_model": {}},
            samples,
            layer,
            entity_layers,
            experiment_dir,
            device,
            random_init=True,
        )
    elif not args.random:
        logger.warning("no --control-editors-dir: the Control Model row is left out")

    store = suite.store

    def table_for(entity_layer: int) -> tables.Table:
        results = {}
        for row in cls.ROWS:
            result = store.read_result(store.result_file(experiment_dir, row, entity_layer))
            if result is not None:
                results[row] = result
        table = suite.table(results, record, entity_layer)
        table.notes = [*table.notes, *chosen.notes]
        return table

    return ProbeSummary(experiment_dir, *write_summaries(experiment_dir, entity_layers, table_for))
