"""Evaluate a REMEDI editor and baselines on CounterFact; write results, tables and a plot.

    python -m scripts.eval_fact_gen -n my_eval -e results/my_run -m gpt2-xl -l 0 --device cuda
    python -m scripts.eval_fact_gen -n my_eval -m gpt2-xl --baseline prefix

writes one JSON per benchmark under ``results/NAME/<method>/<benchmark>.json`` (atomically;
a rerun skips finished ones unless ``--rerun``), then ``results/NAME/summary.{md,tex,png,json}``,
and prints the summary table. With ``-e``, only the training run's held-out (test split) cases
are evaluated, by REMEDI and by every baseline; without it, all cases (baselines only).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from remedi import benchmarks, cli, data, env, models, report, training


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI editors and baselines")
    cli.add_arguments(parser)
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument("-e", "--editors-dir", type=Path, help="training run of the editors")
    parser.add_argument("-m", "--model", required=True, help="model name, alias, or directory")
    parser.add_argument(
        "-l", "--layer", type=int, help="editor layer (default: the run's only one)"
    )
    parser.add_argument(
        "-t", "--editor-type", default="linear", help="editor type (default linear)"
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=[],
        choices=sorted(benchmarks.BASELINES),
        help="baselines to evaluate next to the editor",
    )
    parser.add_argument(
        "--baseline",
        choices=sorted(benchmarks.BASELINES),
        help="evaluate one baseline (without -e: only that baseline)",
    )
    parser.add_argument(
        "-b",
        "--benchmarks",
        nargs="+",
        default=list(benchmarks.BENCHMARKS),
        choices=list(benchmarks.BENCHMARKS),
        help="benchmarks to run (default: all)",
    )
    parser.add_argument("--device", help="e.g. cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", help="model dtype, e.g. float32, bfloat16, float16")
    parser.add_argument(
        "--dataset-file",
        type=Path,
        help="ROME-format counterfact.json (default: the training run's, else the cache)",
    )
    parser.add_argument(
        "--rome-data-dir",
        type=Path,
        help="directory with attribute_snippets.json, idf.npy, tfidf_vocab.json "
        "(default: the dataset file's directory, else the data directory)",
    )
    parser.add_argument(
        "--world-file", type=Path, help="toy world.json (default: next to the dataset file)"
    )
    parser.add_argument("--rerun", action="store_true", help="recompute finished benchmarks")
    parser.add_argument("--max-cases", type=int, help="evaluate only the first N cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of generation and replacements")
    parser.add_argument("--batch-size", type=int, default=benchmarks.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=benchmarks.GENERATION_MAX_LENGTH)
    parser.add_argument("--top-k", type=int, default=benchmarks.GENERATION_TOP_K)
    args = parser.parse_args(argv)
    if args.editors_dir is None and args.baseline is None and not args.baselines:
        parser.error("nothing to evaluate: pass -e EDITORS_DIR and/or --baseline(s)")
    if args.editors_dir is None and args.layer is not None:
        parser.error("-l/--layer selects an editor: pass -e EDITORS_DIR too")
    return args


def _editor_layer(run_dir: Path, editor_type: str, layer: int | None) -> int:
    available = training.list_run_editors(run_dir).get(editor_type, [])
    if layer is not None:
        return layer
    if len(available) == 1:
        return available[0]
    raise SystemExit(
        f"{run_dir} has finished {editor_type} editors for layers {available or 'none'}; "
        "choose one with -l LAYER"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    dataset_file: Path | None = args.dataset_file
    test_ids: list[str] | None = None
    if args.editors_dir is not None:
        run = training.load_run(args.editors_dir)
        if run.args.dataset != "counterfact":
            raise SystemExit(
                f"the editors in {args.editors_dir} were trained on {run.args.dataset!r}; this "
                "evaluation needs CounterFact in ROME's format (paraphrase, neighborhood and "
                "generation prompts)"
            )
        test_ids = list(run.split.test)
        if dataset_file is None and run.args.dataset_file:
            dataset_file = Path(run.args.dataset_file)
    records = data.load_counterfact_records(dataset_file)
    cases = benchmarks.counterfact_cases(records, test_ids)
    if args.max_cases is not None:
        cases = cases[: args.max_cases]
    if not cases:
        raise SystemExit("no cases to evaluate (is the training run's test split empty?)")

    rome_dir = args.rome_data_dir or (dataset_file.parent if dataset_file else env.data_dir())
    resources = benchmarks.load_resources(
        rome_dir,
        world_file=args.world_file,
        batch_size=args.batch_size,
        seed=args.seed,
        max_length=args.max_length,
        top_k=args.top_k,
    )

    mt = models.load_model(args.model, device=device, dtype=args.dtype)
    methods: list[benchmarks.Method] = []
    if args.editors_dir is not None:
        layer = _editor_layer(args.editors_dir, args.editor_type, args.layer)
        editor = training.load_run_editor(args.editors_dir, layer, args.editor_type, mt)
        methods.append(
            benchmarks.RemediMethod(
                mt,
                editor,
                cases,
                source=str(Path(args.editors_dir).resolve()),
                batch_size=args.batch_size,
            )
        )
    baselines = list(dict.fromkeys([*args.baselines, *([args.baseline] if args.baseline else [])]))
    methods += [benchmarks.BASELINES[name](mt, cases, resources) for name in baselines]

    experiment_dir = env.results_dir() / args.name
    benchmarks.run_benchmarks(
        mt, methods, cases, resources, experiment_dir, args.benchmarks, rerun=args.rerun
    )
    results = benchmarks.collect_results(mt, methods, cases, resources, experiment_dir)
    summary = report.summarize(results, title=f"{args.name}: {args.model}, {len(cases)} cases")
    files = report.write_summary(summary, experiment_dir)
    print(report.markdown_table(summary))
    print(f"results: {experiment_dir}")
    print(f"table: {files.markdown} (LaTeX: {files.latex})")
    print(f"plot: {files.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
