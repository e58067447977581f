"""Aggregate the summaries of several evaluations (e.g. one per seed) into one table.

    python -m scripts.summarize_runs -n quickstart_toy_seeds \\
        results/eval_gen_counterfact_toy_seed0 results/eval_gen_counterfact_toy_seed1 ...

reads each directory's ``summary.json`` and writes ``results/NAME/summary.{md,tex,png,json}``:
each cell the mean over the runs ± their standard deviation. The runs are all CounterFact
editing evaluations (``scripts.eval_fact_gen``) or all runs of one table benchmark
(classification, mediation, entailment: ``scripts.eval_fact_cls``, ``eval_bias_cls``, ...).
Prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import env, io
from remedi.evaluation.editing import counterfact_report
from remedi.report import tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="aggregate evaluation summaries (mean ± sd)")
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument("--title", default="", help="table title (default: NAME)")
    parser.add_argument("runs", nargs="+", type=Path, help="evaluation directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    loaded = []
    for run in args.runs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            parser.error(
                f"{path} does not exist: evaluate that run first (scripts.eval_fact_gen, "
                "scripts.eval_fact_cls, ...)"
            )
        loaded.append((path, io.read_json(path, "evaluation summary")))
    kinds = {path: "table" if "columns" in raw else "editing" for path, raw in loaded}
    if len(set(kinds.values())) > 1:
        parser.error(
            "the runs mix editing summaries and benchmark tables: "
            + ", ".join(f"{path} ({kind})" for path, kind in kinds.items())
        )
    title = args.title or f"{args.name}: {len(loaded)} runs"
    directory = env.results_dir() / args.name
    if "table" in kinds.values():
        try:
            table = tables.aggregate_tables(
                [tables.Table.from_dict(raw) for _, raw in loaded], title=title
            )
        except ValueError as error:
            parser.error(str(error))
        table_files = tables.write_table(table, directory, "summary")
        print(tables.markdown(table))
        print(f"table: {table_files.markdown} (LaTeX: {table_files.latex})")
        print(f"plot: {table_files.plot}")
        return 0
    summaries = [counterfact_report.Summary.from_dict(raw) for _, raw in loaded]
    summary = counterfact_report.aggregate_summaries(summaries, title=title)
    files = counterfact_report.write_summary(summary, directory)
    print(counterfact_report.markdown_table(summary))
    print(f"table: {files.markdown} (LaTeX: {files.latex})")
    print(f"plot: {files.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
