"""The five editing problems of Hase et al. (2023) for one weight-editing method, by layer.

    python -m scripts.edit_problems -m gpt2-xl --method rome --edit-layer all -n 1000

traces each case (the tracing effect kept beside each edit), edits it for every problem at every
layer, and writes ``results/NAME/<problem>/L<layer>/<case_id>.json`` (a rerun skips finished ones),
then the mean success by layer (``success_by_layer.{md,tex,json,png}``) and the R^2 table
(``r2.*``). ``NAME`` defaults to ``edit_problems_<model>_<method>``.

``--protocol reference`` (the default) is google/belief-localization's: its fact filter, the
tracing effect of the whole o_true under its fixed noise (3 sigma for models it gives none),
its per-problem hyperparameters and edit windows; ``--protocol ours`` is this project's first
protocol (see :mod:`remedi.evaluation.locate.protocols`). The protocol is saved in
``results/NAME/protocol.json``; a resume under another is refused (``--rerun`` recomputes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, corpora, data, env, errors, evaluation, models, tracing
from remedi.evaluation.locate import analysis, problems, protocols, running
from remedi.methods import registry
from remedi.settings import EDIT_PROBLEMS

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="the five editing problems of Hase et al.")
    cli.add_arguments(parser)
    parser.add_argument("-m", "--model", required=True, help="model name, alias, or directory")
    parser.add_argument(
        "--method",
        required=True,
        help="registered weight-editing method "
        f"({', '.join(registry.names('weights', prepared=True))})",
    )
    parser.add_argument(
        "--edit-layer",
        default="all",
        help="central edit layer N, comma-separated layers (0,5,10), or 'all' (default)",
    )
    parser.add_argument(
        "--problems",
        nargs="+",
        choices=problems.PROBLEMS,
        default=list(problems.PROBLEMS),
        help="problems to run (default: all five)",
    )
    parser.add_argument("--name", help="experiment name (default edit_problems_<model>_<method>)")
    parser.add_argument("-n", "--num-cases", type=int, help="the first N cases (default all)")
    parser.add_argument(
        "--trace-kind",
        choices=tracing.KINDS,
        default=problems.DEFAULT_TRACE_KIND,
        help="the tracing effect kept beside each edit (default mlp, as the reference)",
    )
    parser.add_argument(
        "--trace-window",
        type=int,
        default=problems.DEFAULT_TRACE_WINDOW,
        help="its window (default 5, as the reference)",
    )
    parser.add_argument(
        "--protocol",
        choices=protocols.PROTOCOLS,
        default=protocols.DEFAULT_PROTOCOL,
        help="reference (default): belief-localization's filter, whole-target tracing effect, "
        "fixed noise and per-problem hyperparameters; ours: the first-token protocol",
    )
    parser.add_argument("--num-samples", type=int, default=tracing.DEFAULT_NUM_SAMPLES)
    parser.add_argument(
        "--noise-factor",
        type=float,
        default=tracing.NOISE_FACTOR,
        help="noise in standard deviations of the subjects' embeddings (default 3), where the "
        "protocol has no fixed noise for the model",
    )
    parser.add_argument("--seed", type=int, default=tracing.DEFAULT_SEED, help="noise seed")
    parser.add_argument(
        "--stats-dataset", help=f"corpus of ROME's/MEMIT's key statistics: {corpora.CORPUS_HELP}"
    )
    parser.add_argument("--stats-dir", type=Path, help="key statistics cache")
    parser.add_argument("--stats-num-texts", type=int, help="texts of the statistics corpus")
    cli.add_counterfact_file_arguments(parser)
    parser.add_argument("--world-file", type=Path, help="toy world.json (default: beside it)")
    cli.add_device_arguments(parser, EDIT_PROBLEMS)
    parser.add_argument("--rerun", action="store_true", help="recompute finished edits")
    args = parser.parse_args(argv)
    weight_methods = registry.names("weights", prepared=True)
    if args.method not in weight_methods:
        parser.error(
            f"unknown weight-editing method {args.method!r}; registered: {', '.join(weight_methods)}"
        )
    return args


def edit_layers(value: str, num_layers: int) -> list[int]:
    """``all``, one layer number, or comma-separated layer numbers, checked against the model;
    the run edits them in the order given (a long run cut short has its first ones: spread them
    out, 0,15,5,25)."""
    if value.strip() == "all":
        return list(range(num_layers))
    try:
        layers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise errors.UsageError(
            f"--edit-layer takes a layer number, comma-separated layer numbers (0,5,10) or "
            f"'all', got {value!r}"
        ) from None
    if not layers:
        raise errors.UsageError("--edit-layer names no layer; give N, N,M,... or 'all'")
    for layer in layers:
        tracing.layer_window(layer, 1, num_layers)
    return list(dict.fromkeys(layers))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)
    records = data.COUNTERFACT_RECORD_LOADERS[args.dataset](args.dataset_file)
    cases = evaluation.first_cases(records, args.num_cases, "to edit")
    dataset_dir = args.dataset_file.parent if args.dataset_file else env.data_dir()
    resources = evaluation.load_resources(dataset_dir, world_file=args.world_file)
    mt = models.load_model(args.model, device=device, dtype=args.dtype, experiment=EDIT_PROBLEMS)
    layers = edit_layers(args.edit_layer, mt.num_layers)

    subjects = [record["requested_rewrite"]["subject"] for record in records]
    model_id = protocols.model_id(args.model)
    if protocols.noise_rule(args.protocol, model_id) == "fixed":
        noise_scale = protocols.NOISE_BY_MODEL[model_id]
    else:
        noise_scale = tracing.noise_scale_for(mt, subjects, args.noise_factor)
    settings = tracing.TraceSettings(
        noise_scale=noise_scale, num_samples=args.num_samples, seed=args.seed
    )
    protocol = protocols.build(args.protocol, model_id, args.method, noise_scale)
    logger.info(
        "protocol %s: noise %s (%s)", protocol.name, protocol.noise_scale, protocol.noise_rule
    )
    options = {}
    if args.method in registry.names("weights", prepared=True):
        options = {
            "stats_dataset": args.stats_dataset,
            "stats_dir": args.stats_dir,
            "stats_num_texts": args.stats_num_texts,
        }
    slug = args.model.replace("/", "_")
    directory = env.results_dir() / (args.name or f"edit_problems_{slug}_{args.method}")
    results = running.run_problems(
        mt,
        args.method,
        cases,
        resources,
        settings,
        directory,
        layers,
        args.problems,
        trace_kind=args.trace_kind,
        trace_window=args.trace_window,
        method_options=options,
        rerun=args.rerun,
        protocol=protocol,
    )
    if not results:
        print("no case is answered correctly by the model: nothing was edited")
        return 0
    title = f"{args.model}, {args.method}, protocol {protocol.name}"
    r2, by_layer = analysis.analyze(results, title=title)
    for table, stem in ((by_layer, "success_by_layer"), (r2, "r2")):
        cli.write_and_show_table(table, directory, stem)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
