"""The efficacy / relation-specificity frontier of evaluated training runs: a table and a plot.

    python -m scripts.relation_frontier -n relspec_frontier_toy \\
        --point "off=results/eval_a_seed0,results/eval_a_seed1" --point "1=results/eval_b_seed0"

Each ``--point LABEL=DIR[,DIR...]`` is one setting and the evaluations of its runs (directories
that ``scripts.eval_fact_gen`` wrote, with efficacy and relation specificity); writes
``results/NAME/frontier.{md,json,png}`` (``invoke x.sweep.relspec`` runs it after its sweep).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, env
from remedi.evaluation.editing import relation_frontier


def _point(value: str) -> tuple[str, list[Path]]:
    label, separator, directories = value.partition("=")
    if not separator or not label or not directories:
        raise argparse.ArgumentTypeError(
            f"--point {value!r}: write LABEL=DIR[,DIR...], e.g. lam_rel_1=results/eval_seed0"
        )
    return label, [Path(directory) for directory in directories.split(",") if directory]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="efficacy against relation specificity")
    parser.add_argument("-n", "--name", required=True, help="results/NAME gets the frontier")
    parser.add_argument(
        "--point",
        type=_point,
        action="append",
        required=True,
        help="LABEL=DIR[,DIR...]: a setting and its evaluations (one per run); repeat per setting",
    )
    parser.add_argument("--title", default="", help="the table's and the plot's title")
    parser.add_argument(
        "--goal",
        type=float,
        nargs=2,
        metavar=("EFFICACY", "RELATION_SPECIFICITY"),
        help="shade the corner a setting should reach, e.g. 95 90",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    points = relation_frontier.frontier(dict(args.point))
    directory = env.results_dir() / args.name
    goal = (args.goal[0], args.goal[1]) if args.goal else None
    markdown, _, plot = relation_frontier.write_frontier(points, directory, args.title, goal)
    print(markdown.read_text(), end="")
    print(f"table: {markdown}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
