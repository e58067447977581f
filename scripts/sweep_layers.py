"""Collect a layer sweep's results: every metric against the layer, and the best layer.

    python -m scripts.sweep_layers --kind cls -n sweep_cls_counterfact_toy --layers 0 1 2 3

reads the per-layer results the sweep's evaluations wrote under ``results/NAME`` (see
:mod:`remedi.sweep`), writes ``sweep.{md,tex,json,png}``, ``sweep_result.json`` and
``sweep_layers.png`` there, and prints the table and the best layer.
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    experiment_dir = env.results_dir() / args.name
    result, files = sweep.write_sweep(args.kind, experiment_dir, args.layers, args.title)
    print(tables.markdown(tables.Table.from_dict(io.read_json(files.json, "sweep table"))))
    print(f"best layer ({result.criterion}): {result.best_layer}")
    print(f"plot: {experiment_dir / 'sweep_layers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
