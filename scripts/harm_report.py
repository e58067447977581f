"""Harm curves and table from finished harm runs.

    python -m scripts.harm_report results/harm_toy_* -o results/harm_toy_report

writes ``OUT.png`` (each measure against the number of edits, one line per method and mode)
and ``OUT.md`` (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, errors, io
from remedi.evaluation.general import harm_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plot and tabulate harm runs")
    cli.add_arguments(parser)
    parser.add_argument("runs", nargs="+", type=Path, help="harm run directories")
    parser.add_argument("-o", "--output", type=Path, required=True, help="OUT (.png and .md)")
    args = parser.parse_args(argv)
    curves = harm_report.read_curves(args.runs)
    if not curves:
        raise errors.MissingFileError(
            "no checkpoint_*.json in the given directories; run invoke x.harm.run first"
        )
    table = harm_report.markdown_table(curves)
    io.write_text(args.output.with_suffix(".md"), table)
    harm_report.plot_curves(curves, args.output.with_suffix(".png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
