"""Aggregate the summaries of several evaluations (e.g. one per toy-world seed) into one table.

    python -m scripts.summarize_runs -n quickstart_toy_seeds \\
        results/eval_gen_counterfact_toy_seed0 results/eval_gen_counterfact_toy_seed1 ...

reads each directory's ``summary.json`` (written by ``scripts.eval_fact_gen``) and writes
``results/NAME/summary.{md,tex,png,json}``: each cell the mean over the runs ± their standard
deviation. Prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import env, io, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aggregate evaluation summaries (mean ± sd)")
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument("--title", default="", help="table title (default: NAME)")
    parser.add_argument("runs", nargs="+", type=Path, help="evaluation directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    summaries = []
    for run in args.runs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            parser.error(f"{path} does not exist: evaluate that run first (scripts.eval_fact_gen)")
        summaries.append(report.Summary.from_dict(io.read_json(path, "evaluation summary")))
    title = args.title or f"{args.name}: {len(summaries)} runs"
    summary = report.aggregate_summaries(summaries, title=title)
    directory = env.results_dir() / args.name
    files = report.write_summary(summary, directory)
    print(report.markdown_table(summary))
    print(f"table: {files.markdown} (LaTeX: {files.latex})")
    print(f"plot: {files.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
