"""Evaluate entailment on the McRae norms: Unedited, Prefix and REMEDI.

    python -m scripts.eval_entailment -n my_ent -e results/editors_mcrae_gptj -m gptj

writes ``results/NAME/<method>/entailment.json`` (a rerun skips methods finished with the same
settings and samples unless ``--rerun``) and ``results/NAME/summary.{md,tex,json,png}``. Samples:
the held-out (test) split of the editors' training run (or, without ``-e``, the first
``--max-samples`` samples and no REMEDI row); ``--split reference`` takes the reference's rows
5000-9999 (``--small``: 5000-5999) instead, ``--split validation`` the run's early-stopping split
(see :mod:`remedi.evaluation.splits`; our McRae file orders its samples otherwise than the
reference's, so the same rows hold other samples). By default as the reference: Prefix puts the context before co-occurring and
original features only, and the norms are compared with two decimals (``--rewrite-unrelated`` and
``--exact-norms`` change that). See :mod:`remedi.evaluation.probing.entailment`. McRae is real-world knowledge:
on the toy LM the numbers mean nothing; use a pretrained model.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, data, env, io, models, training
from remedi.evaluation import splits
from remedi.evaluation.probing import entailment
from remedi.methods import registry
from remedi.methods.base import MethodSetup
from remedi.methods.remedi import RemediEdit
from remedi.settings import REMEDI

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate entailment on the McRae norms")
    cli.add_arguments(parser)
    cli.add_editor_arguments(parser)
    parser.add_argument("--dataset-file", type=Path, help="McRae norms file (default: the run's)")
    parser.add_argument(
        "--rewrite-unrelated",
        action="store_true",
        help="Prefix also puts the context before the unrelated features (default: before the "
        "co-occurring and original ones only, as the reference, so its unrelated Δp is 0)",
    )
    parser.add_argument(
        "--exact-norms",
        action="store_true",
        help="compare with the norms' exact probabilities (default: rounded to "
        f"{entailment.NORM_DIGITS} decimals, zeros left out, as the reference)",
    )
    cli.add_sample_evaluation_arguments(parser)
    splits.add_arguments(parser)
    args = parser.parse_args(argv)
    splits.check_arguments(parser, args, has_run=args.editors_dir is not None)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)
    methods = ["unedited", "prefix"]
    if args.editors_dir is not None:
        record = training.load_run(
            args.editors_dir, "mcrae", "train McRae editors with: invoke x.train.mcrae"
        )
        args.random = args.random or record.args.random_init
        samples, chosen = splits.load_split_samples(
            args.editors_dir, args.split, args.dataset_file, args.small
        )
        methods.append("remedi")
    else:
        samples = data.load_dataset("mcrae", file=args.dataset_file)
        chosen = splits.select_split(
            "mcrae",
            samples["id"],
            dict(zip(samples["id"], samples["entity"], strict=True)),
            args.split,
            small=args.small,
        )
        samples = data.select_ids(samples, chosen.ids)
    if args.max_samples is not None:
        samples = samples.select(range(min(args.max_samples, len(samples))))
    rows = [dict(row) for row in samples]
    sample_ids = [str(row["id"]) for row in rows]
    experiment_dir = env.results_dir() / args.name
    settings = entailment.EntailmentSettings(
        norm_digits=None if args.exact_norms else entailment.NORM_DIGITS,
        rewrite_unrelated=args.rewrite_unrelated,
    )

    results: dict[str, entailment.EntailmentResults] = {}
    mt = None
    for method in methods:
        path = experiment_dir / method / "entailment.json"
        if path.is_file() and not args.rerun:
            stored = entailment.EntailmentResults.from_dict(io.read_json(path, "entailment result"))
            # Files without per-sample results cannot tell: they are kept, as before.
            stored_ids = [sample.id for sample in stored.samples]
            same_samples = not stored_ids or stored_ids == sample_ids
            if stored.settings == settings and same_samples:
                results[method] = stored
                continue
            logger.info(
                "%s was computed with other settings (%s) or on other samples (%d stored); "
                "recomputing",
                path,
                stored.settings,
                len(stored.samples),
            )
        if mt is None:
            mt = models.load_model(
                args.model,
                device=device,
                dtype=args.dtype,
                random_init=args.random,
                experiment=REMEDI,
            )
        edit: RemediEdit | None = None
        if registry.method_spec(method).edits == "hidden_states":
            setup = MethodSetup(batch_size=args.batch_size)
            prepared = registry.prepare(method, mt, setup, **cli.editor_options(args))
            assert isinstance(prepared, RemediEdit)
            edit = prepared
        result = entailment.entailment(mt, rows, method, edit, args.batch_size, settings)
        io.write_json(path, result.to_dict(), indent=None)
        results[method] = result

    table = entailment.entailment_table(results, f"{args.name}: McRae entailment, {args.model}")
    table.notes += chosen.notes
    cli.write_and_show_table(table, experiment_dir, "summary", results=experiment_dir)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
