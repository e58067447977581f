"""Print the parity table: each comparison of ours with a reference release, its inputs, the
largest relative difference and whether it is within the stated tolerance.

Usage::

    python -m benchmarks.parity --rome-dir /work/refs/rome --memit-dir /work/refs/memit

Each ``--*-dir`` is a git checkout of the release (kmeng01/rome, kmeng01/memit) outside the
project; a comparison whose checkout is not given is left out. Exit code 1 if a comparison that is
meant to agree does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.parity import causal_tracing, setup, weight_methods
from benchmarks.parity.setup import Comparison

logger = logging.getLogger(__name__)

COMPARISONS = ("rome", "rome-prefixes", "memit", "ft", "tracing")


def run(
    names: Sequence[str], rome_dir: Path | None, memit_dir: Path | None, layer: int
) -> list[Comparison]:
    """Run the named comparisons whose reference checkout is given."""
    mt = setup.tiny_gpt2()
    rows: list[Comparison] = []
    needs = {"memit": memit_dir}
    for name in names:
        directory = needs.get(name, rome_dir)
        if directory is None:
            logger.warning(
                "skipping %s: no checkout given (--%s-dir)",
                name,
                "memit" if name == "memit" else "rome",
            )
            continue
        logger.info("running %s", name)
        if name == "rome":
            rows.append(weight_methods.compare_rome(mt, directory, layer, with_statistics=False))
            rows.append(weight_methods.compare_rome(mt, directory, layer, with_statistics=True))
        elif name == "rome-prefixes":
            templates = weight_methods.sample_templates(mt)
            rows.append(
                weight_methods.compare_rome(mt, directory, layer, False, templates=templates)
            )
        elif name == "memit":
            layers = [layer, layer + 1]
            rows.append(
                weight_methods.compare_memit(
                    mt, directory, layers, weight_methods.sample_templates(mt)
                )
            )
        elif name == "ft":
            rows.append(weight_methods.compare_ft(mt, directory, layer))
            rows.append(weight_methods.compare_ft(mt, directory, layer, norm_constraint=None))
        elif name == "tracing":
            rows.extend(causal_tracing.compare_tracing(mt, directory))
    return rows


def table(rows: Sequence[Comparison]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| comparison | reference | inputs | compared | largest rel. diff. | tolerance | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.reference} | {row.inputs} | {row.quantity} | "
            f"{row.max_relative_difference:.2g} | {row.tolerance:g} | {row.status} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rome-dir", type=Path, help="git checkout of kmeng01/rome")
    parser.add_argument("--memit-dir", type=Path, help="git checkout of kmeng01/memit")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=COMPARISONS,
        default=list(COMPARISONS),
        help="comparisons to run",
    )
    parser.add_argument(
        "--layer", type=int, default=1, help="edited layer (MEMIT: it and the next)"
    )
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = run(args.only, args.rome_dir, args.memit_dir, args.layer)
    print(table(rows))
    for row in rows:
        print(f"\n{row.name}: differences {[f'{d:.2g}' for d in row.differences]}")
        for patch in row.patches:
            print(f"  patched: {patch}")
        if row.by_design:
            print(f"  by design: {row.by_design}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps([row.to_dict() for row in rows], indent=2) + "\n")
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
