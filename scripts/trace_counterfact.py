"""Causal tracing of CounterFact facts; per-case JSON, average heatmaps as PNG.

    python -m scripts.trace_counterfact -m gpt2-xl -n 2000 --window-sizes 10 5 3 1

writes ``results/NAME/cases/<case_id>.json`` (one per case, atomically; a rerun skips cases
already traced with the same settings), then ``results/NAME/average_<kind>_w<window>.png`` and
``averages.json`` over the cases the model answers correctly (its top token is the target's
first token; see :mod:`remedi.tracing` for how ROME's filter differs). The prompt is the
CounterFact case's rewrite prompt, the target ``target_true``; ROME's figures trace the facts
of its ``known_1000.json`` instead (kmeng01/rome experiments/causal_trace.py:71-75,99-114).

``--average rome`` averages as ROME's notebook does (its filter, tokens pooled across cases)
into ``average_rome_<kind>_w<window>.png`` and ``averages_rome.json``, from the same traced
cases; with ``--kinds residual --window-sizes 1`` the residual stream is restored as ROME
restores it (at one layer, never a window).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from remedi import cli, data, env, evaluation, io, models, tracing
from remedi.settings import TRACING

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="causal tracing of CounterFact facts")
    cli.add_arguments(parser)
    parser.add_argument("-m", "--model", required=True, help="model name, alias, or directory")
    parser.add_argument("--name", help="experiment name (default trace_counterfact_<model>)")
    parser.add_argument("-n", "--num-cases", type=int, help="trace the first N cases (default all)")
    parser.add_argument(
        "--window-sizes",
        type=int,
        nargs="+",
        default=list(tracing.DEFAULT_WINDOWS),
        help="windows of restored layers (default: 10 5 3 1); ROME's residual trace is window 1, "
        "its MLP and attention traces window 10",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=tracing.KINDS,
        default=list(tracing.KINDS),
        help="what is restored: the residual stream, the MLP or the attention output",
    )
    parser.add_argument(
        "--num-samples", type=int, default=tracing.DEFAULT_NUM_SAMPLES, help="noise samples"
    )
    parser.add_argument(
        "--noise-factor",
        type=float,
        default=tracing.NOISE_FACTOR,
        help="noise in standard deviations of subject embeddings (default 3, as ROME)",
    )
    parser.add_argument(
        "--noise-subjects",
        choices=("distinct", "all"),
        default="distinct",
        help="measure the embeddings' spread over each distinct subject once (default) or over "
        "every case's subject, repeats included (all, as ROME)",
    )
    parser.add_argument("--noise-scale", type=float, help="absolute noise scale (overrides)")
    parser.add_argument("--seed", type=int, default=tracing.DEFAULT_SEED, help="noise seed")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=tracing.DEFAULT_MAX_BATCH_ROWS,
        help="rows per forward pass (restorations x noise samples)",
    )
    parser.add_argument(
        "--no-prefix-reuse",
        dest="reuse_prefix",
        action="store_false",
        help="run every restoration on the whole prompt instead of after the corrupted run's "
        "cached tokens before the restored one (same scores, about twice the compute)",
    )
    cli.add_counterfact_file_arguments(parser)
    cli.add_device_arguments(parser, TRACING)
    parser.add_argument(
        "--average",
        choices=("ours", "rome"),
        default="ours",
        help="ours: every case whose top token is the target's first, each case's tokens "
        "averaged first; rome: ROME's filter (the decoded top token is the whole target) and "
        "tokens pooled across cases, written as average_rome_*.png and averages_rome.json",
    )
    parser.add_argument("--rerun", action="store_true", help="retrace finished cases")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)
    records = data.COUNTERFACT_RECORD_LOADERS[args.dataset](args.dataset_file)
    cases = evaluation.first_cases(records, args.num_cases, "to trace")
    mt = models.load_model(args.model, device=device, dtype=args.dtype, experiment=TRACING)

    # ROME measures the spread over the subjects of the whole dataset, not only those traced
    # (kmeng01/rome experiments/causal_trace.py:83-84).
    subjects = [record["requested_rewrite"]["subject"] for record in records]
    scale = args.noise_scale or tracing.noise_scale_for(
        mt, subjects, args.noise_factor, distinct=args.noise_subjects == "distinct"
    )
    settings = tracing.TraceSettings(
        noise_scale=scale,
        num_samples=args.num_samples,
        kinds=list(args.kinds),
        windows=list(args.window_sizes),
        seed=args.seed,
    )
    directory = env.results_dir() / (
        args.name or f"trace_counterfact_{args.model.replace('/', '_')}"
    )
    logger.info("tracing %d cases into %s (noise scale %.4f)", len(cases), directory, scale)
    results = tracing.trace_cases(
        mt,
        [(case.case_id, case.rewrite_prompt, case.entity, case.target_true) for case in cases],
        settings,
        directory / "cases",
        rerun=args.rerun,
        max_batch_rows=args.max_batch_rows,
        reuse_prefix=args.reuse_prefix,
    )
    correct = sum(result.correct for result in results)
    print(f"{correct} of {len(results)} cases answered correctly (traced)")
    averaged, pooling, suffix = results, "case", ""
    if args.average == "rome":
        averaged, pooling, suffix = tracing.rome_cases(results, mt.tokenizer), "token", "_rome"
        correct = len(averaged)
        print(f"{correct} of them kept by ROME's filter (the top token is the whole target)")
    if not correct:
        return 0
    averages = []
    for kind in settings.kinds:
        for window in settings.windows:
            average = tracing.average_trace(averaged, kind, window, pooling)
            averages.append(average.to_dict())
            path = tracing.plot_average_trace(
                average,
                directory / f"average{suffix}_{kind}_w{window}.png",
                title=f"{args.model}: average indirect effect, {correct} cases",
            )
            print(f"heatmap: {path}")
    io.write_json(
        directory / f"averages{suffix}.json",
        {"settings": settings.to_dict(), "averages": averages},
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
