"""Evaluate Bias in Bios error correction: the unedited LM (baseline) and a REMEDI editor.

    python -m scripts.eval_bias_gen -n my_eval -e results/editors_biosbias_gptj -m gptj --device cuda

evaluates the training run's held-out samples (people the editor never saw) in the contextual
(bio, then prompt) and decontextual (prompt alone) settings; writes one JSON per method and
setting under ``results/NAME/<method>/<setting>.json`` (a rerun reuses finished ones unless
``--rerun``), then ``results/NAME/summary.{md,tex,png,json}``, and prints the table. Without
``-e``, only the baseline, on every sample of ``--dataset-file``.

By default the samples evaluated differ on purpose from the reference's (rows 5000-9999 of the
reformatted file): they are the training run's test split, people (by first name) held out from
editor training, so that no evaluated person was trained on. ``--split reference`` evaluates the
reference's rows (``--small``: 5000-5999), which our runs do not hold out (a warning counts what
the editors saw); ``--split validation`` the run's early-stopping split. See
:mod:`remedi.evaluation.splits`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, data, env, errors, evaluation, models, settings, training
from remedi.evaluation import splits
from remedi.evaluation.editing import biosbias


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate Bias in Bios error correction")
    cli.add_arguments(parser)
    cli.add_editor_arguments(parser)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(biosbias.SETTINGS),
        choices=biosbias.SETTINGS,
        help="contextual (bio in the prompt) and/or decontextual (default: both)",
    )
    cli.add_device_arguments(parser, settings.REMEDI)
    parser.add_argument(
        "--dataset-file",
        type=Path,
        help="BIOS.pkl or a JSON/JSONL export (default: the training run's)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        help="read only the first N records of the file (default: the training run's; without "
        f"-e, {data.BIOSBIAS_MAX_RECORDS}, the reference's; 0: all)",
    )
    parser.add_argument(
        "--random",
        action="store_true",
        help="evaluate on the randomly initialised model (default: what the editors were "
        "trained on)",
    )
    parser.add_argument("--rerun", action="store_true", help="recompute finished results")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N samples")
    splits.add_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled generations")
    parser.add_argument("--batch-size", type=int, default=evaluation.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=biosbias.MAX_LENGTH)
    parser.add_argument(
        "--generation-length",
        choices=evaluation.GENERATION_LENGTHS,
        default=biosbias.GENERATION_LENGTH,
        help=f"how --max-length is counted: {biosbias.GENERATION_LENGTH} (default, the "
        "reference's: over left-padded groups of 16 samples, ending at end-of-text) or "
        "own-prompt (each text's own prompt, sampling through end-of-text: longer texts)",
    )
    parser.add_argument("--top-k", type=int, default=biosbias.TOP_K_SAMPLING)
    args = parser.parse_args(argv)
    cli.check_editor_arguments(parser, args)
    splits.check_arguments(parser, args, has_run=args.editors_dir is not None)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)
    dataset_file: Path | None = args.dataset_file
    max_records: int | None = data.BIOSBIAS_MAX_RECORDS
    run: training.RunRecord | None = None
    if args.editors_dir is not None:
        run = training.load_run(
            args.editors_dir,
            "biosbias",
            "train them on Bias in Bios (invoke x.train.biosbias, or scripts.train_editors -d "
            "biosbias)",
        )
        dataset_file = run.dataset_file_or(dataset_file)
        max_records = run.args.biosbias_max_records
        args.random = args.random or run.args.random_init
    if args.max_records is not None:
        max_records = args.max_records
    samples = data.load_biosbias(dataset_file, max_records)
    chosen = splits.select_split(
        "biosbias",
        samples["id"],
        dict(zip(samples["id"], samples["entity"], strict=True)),
        args.split,
        run,
        args.small,
        args.editors_dir,
    )
    samples = data.select_ids(samples, chosen.ids)
    if args.max_samples is not None:
        samples = samples.select(range(min(args.max_samples, len(samples))))
    cases = biosbias.biosbias_cases(list(samples))
    if not cases:
        raise errors.UsageError(
            f"no samples to evaluate: {chosen.description} is empty, or --max-samples is 0"
        )
    bios = data.load_biosbias_bios(dataset_file, max_records)
    resources = evaluation.EvalResources(
        batch_size=args.batch_size,
        seed=args.seed,
        max_length=args.max_length,
        top_k=args.top_k,
        generation_length=args.generation_length,
    )

    mt = models.load_model(
        args.model,
        device=device,
        dtype=args.dtype,
        random_init=args.random,
        experiment=settings.REMEDI,
    )
    methods = [evaluation.build_method("unedited", mt, cases, resources)]
    if args.editors_dir is not None:
        methods.append(
            evaluation.build_method("remedi", mt, cases, resources, **cli.editor_options(args))
        )
    experiment_dir = env.results_dir() / args.name
    results = biosbias.run_biosbias(
        mt, methods, cases, bios, resources, experiment_dir, args.settings, rerun=args.rerun
    )
    labels = {m.name: biosbias.method_row_label(m.name, m.label) for m in methods}
    title = f"{args.name}: {args.model}, Bias in Bios, {len(cases)} samples ({args.split} split)"
    table, files = biosbias.write_summary(results, labels, experiment_dir, title, chosen.notes)
    print(table)
    print(f"results: {experiment_dir}")
    print(f"table: {files.markdown} (LaTeX: {files.latex})")
    print(f"plot: {files.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
