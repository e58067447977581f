"""Evaluate REMEDI directions as a probe: do they predict whether the LM mediates a fact?

    python -m scripts.eval_fact_cls -n my_cls -e results/editors_counterfact_gptj \\
        --control-editors-dir results/editors_counterfact_gptj_random -m gptj --entity-layers 26

writes one JSON per (row, entity layer) under ``results/NAME/<row>/cls_entity_layer_<L>.json``
(rows: remedi, remedi_identity, control_task, control_model; a rerun skips finished ones unless
``--rerun``), then ``results/NAME/summary.{md,tex,json,png}`` for the first entity layer and
``summary_entity_layer_<L>.*`` for each. Samples: the held-out (test) split of the editors'
training run. Works on any dataset whose samples have both targets (see
:mod:`remedi.evaluation.classification`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from remedi import cli, env, models, training
from remedi.evaluation import classification as cls
from remedi.evaluation import mediation, probe_runs, tables

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI directions as a probe")
    probe_runs.add_arguments(parser, run_help="training run of the editors")
    parser.add_argument(
        "--entity-token",
        choices=("last", "average"),
        default="last",
        help="entity token read: last (the reference's) or average over its tokens",
    )
    return parser.parse_args(argv)


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
        if args.rerun or cls.read_result(cls.result_file(experiment_dir, row, entity_layer)) is None
    ]
    if not todo:
        return
    mt = models.load_model(args.model, device=device, dtype=args.dtype, random_init=random_init)
    editor = training.load_run_editor(run_dir, layer, args.editor_type, mt)
    readings = mediation.read_samples(mt, samples, entity_layers, args.batch_size)
    for row, entity_layer in todo:
        options = rows[row]
        probe = cls.identity_editor(mt, editor) if options.get("identity") else editor
        result = cls.classification(
            mt,
            probe,
            samples,
            entity_layer=entity_layer,
            entity_token=args.entity_token,
            control_task=bool(options.get("control_task")),
            control_task_seed=args.control_task_seed,
            batch_size=args.batch_size,
            random_init=random_init,
            readings=readings,
        )
        path = cls.result_file(experiment_dir, row, entity_layer)
        cls.write_result(path, result)
        logger.info(
            "%s, entity layer %d: F1 %.3f/%.3f MCC %.3f/%.3f (contextual/decontextual)",
            row,
            entity_layer,
            result.metrics.contextual.f1,
            result.metrics.decontextual.f1,
            result.metrics.contextual.mcc,
            result.metrics.decontextual.mcc,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = probe_runs.check_run(args.editors_dir, args.random, "-e")
    probe_runs.check_control_flags(args)
    layer = probe_runs.editor_layer(args.editors_dir, args.editor_type, args.layer)
    entity_layers = list(dict.fromkeys(args.entity_layers or [layer]))
    samples = probe_runs.test_samples(args.editors_dir, args.dataset_file, args.max_samples)
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
        control = probe_runs.check_run(args.control_editors_dir, True, "--control-editors-dir")
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
            result = cls.read_result(cls.result_file(experiment_dir, row, entity_layer))
            if result is not None:
                results[row] = result
        title = f"{args.name}: {args.model}, classification, entity layer {entity_layer}"
        return cls.classification_table(results, record.args.dataset, title)

    table, files = probe_runs.write_summaries(experiment_dir, entity_layers, table_for)
    print(tables.markdown(table))
    print(f"results: {experiment_dir}")
    print(f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
