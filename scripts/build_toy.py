"""Build the toy world: knowledge base, tokenizer, a small LM trained on it, and its datasets.

    python -m scripts.build_toy                 # the default world ("toy"), GPT-2 architecture
    python -m scripts.build_toy --small         # a few dozen entities ("toy-small"), for tests
    python -m scripts.build_toy --arch llama    # the same recipe as a Llama model ("toy-llama")
    python -m scripts.build_toy --size toy-longtail  # entities of graded popularity

A world that is already built is reused unless --rebuild is given. Prints the build report.
"""

from __future__ import annotations

import argparse
import logging
import sys

from remedi import cli
from remedi.toy.build import (
    SIZES,
    dump_report,
    ensure_toy_world,
    read_build_report,
    toy_world_name,
)
from remedi.toy.lm import ARCHITECTURES


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    cli.add_arguments(parser)
    parser.add_argument("--small", action="store_true", help="build the small test world")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="world size to build (default: toy, or toy-small with --small)",
    )
    parser.add_argument(
        "--arch", choices=sorted(ARCHITECTURES), default="gpt2", help="LM architecture"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default 0; an existing build with another seed is rebuilt)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if already built")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.size is not None and args.small and args.size != "toy-small":
        parser.error(f"--small and --size {args.size} name different worlds; pass one of them")
    name = toy_world_name(small=args.small, arch=args.arch)
    if args.size is not None:
        name = args.size if args.arch == "gpt2" else f"{args.size}-{args.arch}"
    paths = ensure_toy_world(name, rebuild=args.rebuild, seed=args.seed)
    report = read_build_report(name)
    print(dump_report(report))
    recall = report["recall"]
    print(
        f"\ntoy world {name!r}: {report['world']['num_entities']} entities, "
        f"{report['model']['num_parameters']:,} parameters, built in {report['build_seconds']:.0f} s "
        f"(training {report['training']['seconds']:.0f} s)\n"
        f"recall: {100 * recall['train_templates']:.1f}% on training templates, "
        f"{100 * recall['heldout_templates']:.1f}% on held-out templates\n"
        f"CounterFact: kept {report['counterfact']['kept']}, "
        f"dropped {report['counterfact']['dropped']}\n"
        f"model: {paths.model_dir}\ndata: {paths.data_dir}"
    )


if __name__ == "__main__":
    sys.exit(cli.run(main))
