"""Evaluate REMEDI directions as a probe on Bias in Bios: do they predict the LM's errors?

    python -m scripts.eval_bias_cls -n my_bios_cls -e results/editors_biosbias_gptj \\
        --control-editors-dir results/editors_biosbias_gptj_random -m gptj --entity-layers 15

writes one JSON per (row, entity layer) under ``results/NAME/<row>/bios_cls_entity_layer_<L>.json``
(rows: remedi, remedi_identity, control_task, control_model; a rerun skips finished ones unless
``--rerun``), then ``results/NAME/summary.{md,tex,json,png}`` for the first entity layer and
``summary_entity_layer_<L>.*`` for each. Samples: the held-out (test) split of the editors'
training run (see :mod:`remedi.evaluation.bios_classification`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from remedi import cli, env, errors, models, training
from remedi.evaluation import bios_classification as bios_cls
from remedi.evaluation import classification as cls
from remedi.evaluation import tables

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI directions on Bias in Bios")
    cli.add_arguments(parser)
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument(
        "-e", "--editors-dir", type=Path, required=True, help="Bias in Bios training run"
    )
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
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N test samples")
    parser.add_argument("--control-task-seed", type=int, default=cls.DEFAULT_CONTROL_TASK_SEED)
    parser.add_argument("--device", help="e.g. cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", help="model dtype, e.g. float32, bfloat16, float16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rerun", action="store_true", help="recompute finished results")
    parser.add_argument(
        "--random",
        action="store_true",
        help="probe the randomly initialised model with its own editors (-e: a --random run)",
    )
    return parser.parse_args(argv)


def _check_run(run_dir: Path, random_init: bool, flag: str) -> training.RunRecord:
    record = training.load_run(run_dir)
    if record.args.dataset != "biosbias":
        raise errors.MismatchError(
            f"{flag} {run_dir} was trained on {record.args.dataset!r}; pass a Bias in Bios run "
            "(invoke x.train.biosbias)"
        )
    if record.args.random_init != random_init:
        raise errors.UsageError(
            f"{flag} {run_dir} was trained on the randomly initialised model; pass it as "
            "--control-editors-dir and the trained model's run as -e (or pass --random)"
            if record.args.random_init
            else f"{flag} {run_dir} was not trained on the randomly initialised model; train one "
            "with invoke x.train.biosbias --random"
        )
    return record


def _evaluate_model(
    args: argparse.Namespace,
    run_dir: Path,
    rows: dict[str, dict],
    samples: list[dict],
    layer: int,
    entity_layers: list[int],
    experiment_dir: Path,
    device: str,
    random_init: bool,
) -> None:
    """Compute the missing results of ``rows`` (row -> options) on one model."""
    todo = [
        (row, entity_layer)
        for row in rows
        for entity_layer in entity_layers
        if args.rerun
        or bios_cls.read_result(bios_cls.result_file(experiment_dir, row, entity_layer)) is None
    ]
    if not todo:
        return
    mt = models.load_model(args.model, device=device, dtype=args.dtype, random_init=random_init)
    editor = training.load_run_editor(run_dir, layer, args.editor_type, mt)
    labels = sorted({sample["target_mediated"] for sample in samples})
    readings = bios_cls.read_label_prompts(mt, samples, labels, entity_layers, args.batch_size)
    for row, entity_layer in todo:
        options = rows[row]
        probe = cls.identity_editor(mt, editor) if options.get("identity") else editor
        result = bios_cls.bios_classification(
            mt,
            probe,
            samples,
            entity_layer=entity_layer,
            labels=labels,
            control_task=bool(options.get("control_task")),
            control_task_seed=args.control_task_seed,
            batch_size=args.batch_size,
            random_init=random_init,
            readings=readings,
        )
        bios_cls.write_result(bios_cls.result_file(experiment_dir, row, entity_layer), result)
        logger.info(
            "%s, entity layer %d: F1 %.3f MCC %.3f (LM error rate %.2f)",
            row,
            entity_layer,
            result.metrics.f1,
            result.metrics.mcc,
            result.metrics.label_rate,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = _check_run(args.editors_dir, args.random, "-e")
    if args.random and args.control_editors_dir is not None:
        raise errors.UsageError(
            "--random already probes the control model: drop --control-editors-dir"
        )
    dataset_file = args.dataset_file or (
        Path(record.args.dataset_file) if record.args.dataset_file else None
    )
    samples = [
        dict(row) for row in training.load_run_samples(args.editors_dir, "test", dataset_file)
    ]
    if args.max_samples is not None:
        samples = samples[: args.max_samples]
    layer = args.layer
    if layer is None:
        layers = training.list_run_editors(args.editors_dir).get(args.editor_type, [])
        if len(layers) != 1:
            raise errors.UsageError(
                f"{args.editors_dir} has {args.editor_type} editors at layers "
                f"{layers or 'none'}; pass -l LAYER"
            )
        layer = layers[0]
    entity_layers = list(dict.fromkeys(args.entity_layers or [layer]))
    experiment_dir = env.results_dir() / args.name

    trained_rows = {
        "remedi": {},
        "remedi_identity": {"identity": True},
        "control_task": {"control_task": True},
    }
    _evaluate_model(
        args,
        args.editors_dir,
        trained_rows,
        samples,
        layer,
        entity_layers,
        experiment_dir,
        device,
        random_init=args.random,
    )
    if args.control_editors_dir is not None:
        control = _check_run(args.control_editors_dir, True, "--control-editors-dir")
        seen = set(control.split.train) | set(control.split.validation)
        overlap = sum(str(sample["id"]) in seen for sample in samples)
        if overlap:
            logger.warning("%d evaluated samples were in the control run's training set", overlap)
        _evaluate_model(
            args,
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

    for index, entity_layer in enumerate(entity_layers):
        results = {}
        for row in cls.ROWS:
            result = bios_cls.read_result(bios_cls.result_file(experiment_dir, row, entity_layer))
            if result is not None:
                results[row] = result
        title = (
            f"{args.name}: {args.model}, Bias in Bios classification, entity layer {entity_layer}"
        )
        table = bios_cls.bios_table(results, title)
        files = tables.write_table(table, experiment_dir, f"summary_entity_layer_{entity_layer}")
        if index == 0:
            files = tables.write_table(table, experiment_dir, "summary")
            print(tables.markdown(table))
            print(f"results: {experiment_dir}")
            print(f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
