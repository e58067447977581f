"""Evaluate a REMEDI editor and baselines on CounterFact; write results, tables and a plot.

    python -m scripts.eval_fact_gen -n my_eval -e results/my_run -m gpt2-xl -l 0 --device cuda
    python -m scripts.eval_fact_gen -n my_eval -m gpt2-xl --baseline prefix

writes one JSON per benchmark under ``results/NAME/<method>/<benchmark>.json`` (atomically;
a rerun skips finished ones unless ``--rerun``), then ``results/NAME/summary.{md,tex,png,json}``,
and prints the summary table. With ``-e``, only the training run's held-out (test split) cases
are evaluated, by REMEDI and by every baseline (``--split validation``: its validation cases, to
choose settings on); without it, all cases (baselines only). ``--split reference`` evaluates the
cases the REMEDI reference evaluates, case ids 5000-9999 (``--small``: 5000-5999), which our runs
do not hold out: see :mod:`remedi.evaluation.splits`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, corpora, data, env, errors, evaluation, models, settings, training
from remedi.evaluation import splits
from remedi.evaluation.editing import counterfact_report
from remedi.methods import registry


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI editors and baselines")
    cli.add_arguments(parser)
    cli.add_editor_arguments(parser)
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=[],
        choices=sorted(registry.baselines_names()),
        help="baselines to evaluate next to the editor",
    )
    parser.add_argument(
        "--baseline",
        choices=sorted(registry.baselines_names()),
        help="evaluate one baseline (without -e: only that baseline)",
    )
    parser.add_argument(
        "--methods",
        type=_method_names,
        default=[],
        help="comma-separated registered methods to evaluate (e.g. remedi,ft,rome; "
        f"registered: {', '.join(evaluation.judged_methods())}); remedi needs -e",
    )
    parser.add_argument(
        "--stats-dataset",
        help=f"corpus of the key statistics of rome and memit: {corpora.CORPUS_HELP} "
        "(default: the method's hyperparameters)",
    )
    parser.add_argument(
        "--stats-dir",
        type=Path,
        help="where key statistics are cached (default: RESULTS/stats)",
    )
    parser.add_argument(
        "--stats-num-texts", type=int, help="texts of the statistics corpus (default: hparams)"
    )
    cli.add_hparams_arguments(parser)
    parser.add_argument(
        "-b",
        "--benchmarks",
        nargs="+",
        default=list(evaluation.BENCHMARKS),
        choices=list(evaluation.BENCHMARKS),
        help="benchmarks to run (default: all)",
    )
    cli.add_device_arguments(
        parser,
        dtype_help="model dtype, e.g. float32, bfloat16, float16 (default: float32 when a "
        "weight-editing method (--methods rome, memit, ft, ...) runs, as ROME and MEMIT ran "
        "every model; else REMEDI's: "
        + settings.dtype_help(settings.REMEDI).partition("(default: ")[2],
    )
    parser.add_argument(
        "-d",
        "--dataset",
        choices=data.COUNTERFACT_DATASETS,
        help="format of the CounterFact file: counterfact (ROME's) or counterfact_easyedit "
        "(EasyEdit's reduced one) (default: the training run's, else counterfact)",
    )
    parser.add_argument(
        "--dataset-file",
        type=Path,
        help="CounterFact file in the --dataset format (default: the training run's, else "
        "ROME's counterfact.json from the cache)",
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
    parser.add_argument(
        "--random",
        action="store_true",
        help="evaluate on the randomly initialised model (default: what the editors were "
        "trained on)",
    )
    parser.add_argument("--max-cases", type=int, help="evaluate only the first N cases")
    splits.add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of generation and replacements")
    parser.add_argument("--batch-size", type=int, default=evaluation.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=evaluation.GENERATION_MAX_LENGTH)
    parser.add_argument("--top-k", type=int, default=evaluation.GENERATION_TOP_K)
    parser.add_argument(
        "--target-scoring",
        choices=evaluation.TARGET_SCORINGS,
        default=evaluation.DEFAULT_TARGET_SCORING,
        help="how a target is scored: mean token log-prob (ROME, default), sum (whole target), "
        "first token (REMEDI's reference)",
    )
    parser.add_argument(
        "--counterfact-prompt",
        choices=data.COUNTERFACT_PROMPT_SOURCES,
        help="the prompt each case asks: the cleaned first paraphrase prompt (the reference's "
        "choice) or ROME's rewrite prompt (default: what the editors were trained with, else "
        "paraphrase)",
    )
    args = parser.parse_args(argv)
    if (
        args.editors_dir is None
        and args.baseline is None
        and not args.baselines
        and not args.methods
    ):
        parser.error("nothing to evaluate: pass -e EDITORS_DIR, --methods and/or --baseline(s)")
    if "remedi" in args.methods and args.editors_dir is None:
        parser.error("--methods remedi needs the trained editors: pass -e EDITORS_DIR")
    cli.check_editor_arguments(parser, args)
    evaluated = [*args.methods, *(["remedi"] if args.editors_dir is not None else [])]
    cli.check_hparams_arguments(parser, args, evaluated)
    splits.check_arguments(parser, args, has_run=args.editors_dir is not None)
    return args


def precision_experiment(args: argparse.Namespace) -> str:
    """The experiment whose reference's precision the model loads in (unless ``--dtype``): ROME's
    and MEMIT's (float32) when a weight-editing method runs, since half-precision weights lose
    part of their updates; REMEDI's otherwise."""
    weight_methods = registry.names("weights", prepared=True)
    others = [*args.baselines, *([args.baseline] if args.baseline else []), *args.methods]
    if any(name in weight_methods for name in others):
        return settings.WEIGHT_EDITING
    return settings.REMEDI


def _method_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in evaluation.judged_methods()]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(evaluation.judged_methods())}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)

    dataset_file: Path | None = args.dataset_file
    run: training.RunRecord | None = None
    prompt_source = args.counterfact_prompt
    dataset: str | None = args.dataset
    if args.editors_dir is not None:
        run = training.load_run(args.editors_dir)
        if run.args.dataset not in data.COUNTERFACT_RECORD_LOADERS:
            raise errors.MismatchError(
                f"the editors in {args.editors_dir} were trained on {run.args.dataset!r}; this "
                f"evaluation reads CounterFact ({', '.join(data.COUNTERFACT_RECORD_LOADERS)}): "
                "evaluate these editors with the script of their dataset"
            )
        if dataset is not None and dataset != run.args.dataset:
            raise errors.MismatchError(
                f"the editors in {args.editors_dir} were trained on {run.args.dataset!r}, not "
                f"--dataset {dataset}; drop --dataset to evaluate on their data"
            )
        dataset = run.args.dataset
        dataset_file = run.dataset_file_or(dataset_file)
        if prompt_source is None:
            prompt_source = run.args.counterfact_prompt
        args.random = args.random or run.args.random_init
    prompt_source = prompt_source or "paraphrase"
    dataset = dataset or "counterfact"
    records = data.COUNTERFACT_RECORD_LOADERS[dataset](dataset_file)
    ids = [f"counterfact/{case_id}" for case_id in records["case_id"]]
    subjects = (rewrite["subject"] for rewrite in records["requested_rewrite"])
    chosen = splits.select_split(
        dataset,
        ids,
        dict(zip(ids, subjects, strict=True)),
        args.split,
        run,
        args.small,
        args.editors_dir,
    )
    cases = evaluation.counterfact_cases(records, chosen.ids, prompt_source=prompt_source)
    if args.max_cases is not None:
        cases = cases[: args.max_cases]
    if not cases:
        raise errors.UsageError(
            f"no cases to evaluate: {chosen.description} is empty, or --max-cases is 0"
        )

    rome_dir = args.rome_data_dir or (dataset_file.parent if dataset_file else env.data_dir())
    resources = evaluation.load_resources(
        rome_dir,
        world_file=args.world_file,
        batch_size=args.batch_size,
        seed=args.seed,
        max_length=args.max_length,
        top_k=args.top_k,
        target_scoring=args.target_scoring,
        prompt_source=prompt_source,
    )
    resources.relation_templates = data.RelationTemplates.from_records(records)

    mt = models.load_model(
        args.model,
        device=device,
        dtype=args.dtype,
        random_init=args.random,
        experiment=precision_experiment(args),
    )
    methods: list[evaluation.Method] = []
    if args.editors_dir is not None:
        methods.append(
            evaluation.build_method(
                "remedi",
                mt,
                cases,
                resources,
                **{**cli.editor_options(args), **cli.hparams_options(args, "remedi")},
            )
        )
    others = [*args.baselines, *([args.baseline] if args.baseline else []), *args.methods]
    weight_options = {
        "stats_dataset": args.stats_dataset,
        "stats_dir": args.stats_dir,
        "stats_num_texts": args.stats_num_texts,
    }
    for name in dict.fromkeys(others):
        if name == "remedi":
            continue  # built from -e above
        options = weight_options if name in registry.names("weights", prepared=True) else {}
        options = {**options, **cli.hparams_options(args, name)}
        methods.append(evaluation.build_method(name, mt, cases, resources, **options))

    experiment_dir = env.results_dir() / args.name
    evaluation.run_benchmarks(
        mt, methods, cases, resources, experiment_dir, args.benchmarks, rerun=args.rerun
    )
    results = evaluation.collect_results(mt, methods, cases, resources, experiment_dir)
    summary = counterfact_report.summarize(
        results, title=f"{args.name}: {args.model}, {len(cases)} cases"
    )
    summary.notes += chosen.notes
    summary.notes += evaluation.unscored_method_notes(methods, cases)
    summary.notes += evaluation.dataset_notes(dataset)
    files = counterfact_report.write_summary(summary, experiment_dir)
    print(counterfact_report.markdown_table(summary))
    print(f"results: {experiment_dir}")
    print(f"table: {files.markdown} (LaTeX: {files.latex})")
    print(f"plot: {files.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
