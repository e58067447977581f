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

from remedi import cli, env, models, training
from remedi.evaluation import bios_classification as bios_cls
from remedi.evaluation import classification as cls
from remedi.evaluation import probe_runs, tables

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI directions on Bias in Bios")
    probe_runs.add_arguments(parser, run_help="Bias in Bios training run")
    return parser.parse_args(argv)


def _check_run(run_dir: Path, random_init: bool, flag: str) -> training.RunRecord:
    return probe_runs.check_run(
        run_dir, random_init, flag, dataset="biosbias", train_task="invoke x.train.biosbias"
    )


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
    _check_run(args.editors_dir, args.random, "-e")
    probe_runs.check_control_flags(args)
    samples = probe_runs.test_samples(args.editors_dir, args.dataset_file, args.max_samples)
    layer = probe_runs.editor_layer(args.editors_dir, args.editor_type, args.layer)
    entity_layers = list(dict.fromkeys(args.entity_layers or [layer]))
    experiment_dir = env.results_dir() / args.name

    _evaluate_model(
        args,
        args.editors_dir,
        probe_runs.TRAINED_ROWS,
        samples,
        layer,
        entity_layers,
        experiment_dir,
        device,
        random_init=args.random,
    )
    if args.control_editors_dir is not None:
        control = _check_run(args.control_editors_dir, True, "--control-editors-dir")
        probe_runs.warn_control_overlap(control, samples)
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

    def table_for(entity_layer: int) -> tables.Table:
        results = {}
        for row in cls.ROWS:
            result = bios_cls.read_result(bios_cls.result_file(experiment_dir, row, entity_layer))
            if result is not None:
                results[row] = result
        title = (
            f"{args.name}: {args.model}, Bias in Bios classification, entity layer {entity_layer}"
        )
        return bios_cls.bios_table(results, title)

    table, files = probe_runs.write_summaries(experiment_dir, entity_layers, table_for)
    print(tables.markdown(table))
    print(f"results: {experiment_dir}")
    print(f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
