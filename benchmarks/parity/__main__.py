"""Print the parity table: each comparison of ours with a reference release, its inputs, the
largest relative difference and whether it is within the stated tolerance.

Usage::

    python -m benchmarks.parity --rome-dir /work/refs/rome --memit-dir /work/refs/memit

Each ``--*-dir`` is a git checkout of the release (kmeng01/rome, kmeng01/memit,
john-hewitt/model-editing-canonical-examples, evandez/REMEDI, JasonForJoy/Model-Editing-Hurt)
outside the project; a comparison whose checkout is
not given is left out. Exit code 1 if a comparison that is meant to agree does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.parity import (
    canonical,
    causal_tracing,
    remedi_loss,
    seed_tasks,
    setup,
    weight_methods,
)
from benchmarks.parity.setup import Comparison
from remedi import env, gguf_models, io
from remedi.methods.rome import RomeHparams

logger = logging.getLogger(__name__)

COMPARISONS = (
    "rome",
    "rome-prefixes",
    "memit",
    "ft",
    "tracing",
    "canonical",
    "canonical-eval",
    "remedi",
    "seed-tasks",
)


def run(args: argparse.Namespace) -> list[Comparison]:
    """Run the comparisons ``args.only`` names whose reference checkout is given."""
    mt = setup.tiny_gpt2()
    rows: list[Comparison] = []
    layer = args.layer
    checkouts = {
        "memit": ("memit", args.memit_dir),
        "canonical": ("canonical", args.canonical_dir),
        "canonical-eval": ("canonical", args.canonical_dir),
        "remedi": ("remedi", args.remedi_dir),
        "seed-tasks": ("hurt", args.hurt_dir),
    }
    names, rome_dir = args.only, args.rome_dir
    for name in names:
        flag, directory = checkouts.get(name, ("rome", rome_dir))
        if directory is None:
            logger.warning("skipping %s: no checkout given (--%s-dir)", name, flag)
            continue
        logger.info("running %s", name)
        if name == "rome":
            rows.append(weight_methods.compare_rome(mt, directory, layer, with_statistics=False))
            rows.append(weight_methods.compare_rome(mt, directory, layer, with_statistics=True))
        elif name == "rome-prefixes":
            templates = weight_methods.sample_templates(mt)
            # Both closed forms where ours has the option; else ours alone (the averaged key).
            has_option = "key_in_residual" in {f.name for f in dataclasses.fields(RomeHparams)}
            for form in ("bare", "mean") if has_option else (None,):
                rows.append(
                    weight_methods.compare_rome(
                        mt, directory, layer, False, templates=templates, key_in_residual=form
                    )
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
        elif name == "canonical":
            rows.extend(canonical.compare_canonical(mt, directory))
        elif name == "canonical-eval":
            rows.extend(canonical.compare_canonical_evaluation(mt, directory))
        elif name == "seed-tasks":
            rows.extend(
                seed_tasks.compare_seed_tasks(
                    directory,
                    args.task_dir,
                    args.seed_model_dir,
                    args.hurt_python,
                    args.seed_items,
                    args.seed_tasks,
                )
            )
        elif name == "remedi":
            if args.baukit_dir is None or args.remedi_python is None:
                raise SystemExit(
                    "the REMEDI comparison also needs --baukit-dir and --remedi-python (the "
                    "reference's package is named remedi too: it runs in its own venv)"
                )
            rows.extend(
                remedi_loss.compare_remedi_loss(
                    mt, directory, args.baukit_dir, args.remedi_python, layer, args.cases_file
                )
            )
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
        "--canonical-dir",
        type=Path,
        help="git checkout of john-hewitt/model-editing-canonical-examples",
    )
    parser.add_argument("--remedi-dir", type=Path, help="git checkout of evandez/REMEDI")
    parser.add_argument("--baukit-dir", type=Path, help="git checkout of davidbau/baukit")
    parser.add_argument(
        "--hurt-dir", type=Path, help="git checkout of JasonForJoy/Model-Editing-Hurt"
    )
    parser.add_argument(
        "--hurt-python",
        type=Path,
        default=Path(sys.executable),
        help="python that runs Model-Editing-Hurt's task scripts (ours plus jsonlines and rouge)",
    )
    parser.add_argument(
        "--task-dir",
        type=Path,
        default=env.shared_data_dir() / "edit_harms" / "task-data",
        help="the harms paper's task-data folder (seed-tasks)",
    )
    parser.add_argument(
        "--seed-model-dir",
        type=Path,
        default=gguf_models.converted_model_dir("smollm2-135m"),
        help="saved model the seed-tasks comparison runs (default: the converted SmolLM2-135M)",
    )
    parser.add_argument(
        "--seed-items",
        type=int,
        default=seed_tasks.DEFAULT_COUNT,
        help="items per task of the seed-tasks comparison",
    )
    parser.add_argument(
        "--seed-tasks",
        nargs="+",
        choices=[script.task for script in seed_tasks.SCRIPTS],
        help="tasks of the seed-tasks comparison (default: all eight)",
    )
    parser.add_argument(
        "--remedi-python",
        type=Path,
        help="python of a venv that runs the REMEDI reference (transformers 4.46, spaCy)",
    )
    parser.add_argument(
        "--cases-file",
        type=Path,
        default=env.shared_data_dir() / "counterfact_easyedit" / "counterfact-edit-1k.json",
        help="EasyEdit CounterFact file whose first samples the REMEDI comparison uses",
    )
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
    rows = run(args)
    print(table(rows))
    for row in rows:
        print(f"\n{row.name}: differences {[f'{d:.2g}' for d in row.differences]}")
        for patch in row.patches:
            print(f"  patched: {patch}")
        if row.by_design:
            print(f"  by design: {row.by_design}")
    if args.output is not None:
        io.write_json(args.output, [row.to_dict() for row in rows])
    return 0 if all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
