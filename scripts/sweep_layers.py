"""Collect a layer sweep's results: every metric against the layer, and the best layer.

    python -m scripts.sweep_layers --kind gen -n sweep_gen_counterfact_toy --layers 0 1 2 3 \
        --num-layers 4
    python -m scripts.sweep_layers --kind cls -n sweep_cls_counterfact_toy --layers 0 1 2 3 \
        --editor-layer 0

reads the per-layer results the sweep's evaluations wrote under ``results/NAME`` (see
:mod:`remedi.sweep`), picks the layer by ``--criterion`` (default: the REMEDI reference's for the
sweep), writes ``sweep.{md,tex,json,png}``, ``sweep_result.json`` and ``sweep_layers.png`` there,
and prints the table, the criterion and the best layer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from remedi import cli, env, io, sweep
from remedi.report import tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="collect a layer sweep")
    cli.add_arguments(parser)
    parser.add_argument("--kind", required=True, choices=sorted(sweep.COLLECTORS))
    parser.add_argument("-n", "--name", required=True, help="sweep experiment (results/NAME)")
    parser.add_argument("--layers", type=int, nargs="+", required=True, help="layers swept")
    parser.add_argument("--title", default="", help="title of the table and plot")
    names = sorted({name for choices in sweep.CRITERIA.values() for name in choices})
    parser.add_argument(
        "--criterion",
        default=sweep.REFERENCE,
        choices=names,
        help="how the layer is picked (default: reference, the REMEDI reference's criterion; "
        "gen: rome_score, ROME's score S; gen_biosbias: top1, decontextual top-1 accuracy)",
    )
    parser.add_argument(
        "--num-layers",
        type=int,
        help="the model's number of layers: its last layer is left out where the criterion "
        "says so (gen, gen_biosbias)",
    )
    parser.add_argument(
        "--editor-layer",
        type=int,
        help="the editor's layer: entity layers below it are left out (cls, cls_biosbias)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    experiment_dir = env.results_dir() / args.name
    result, files = sweep.write_sweep(
        args.kind,
        experiment_dir,
        args.layers,
        args.title,
        args.criterion,
        args.num_layers,
        args.editor_layer,
    )
    print(tables.markdown(tables.Table.from_dict(io.read_json(files.json, "sweep table"))))
    used = ", ".join(result.terms) or "no term measured"
    print(f"best layer by {result.criterion} ({result.rule}; using {used}): {result.best_layer}")
    print(f"plot: {experiment_dir / 'sweep_layers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
