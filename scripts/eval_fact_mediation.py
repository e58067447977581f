"""Evaluate how often the unedited LM mediates CounterFact's facts in and out of context.

    python -m scripts.eval_fact_mediation -n my_med -m gptj --device cuda

writes ``results/NAME/mediation.json`` (skipped if it exists, unless ``--rerun``) and
``results/NAME/summary.{md,tex,json,png}``: the share of samples where the LM prefers the
context's value after the context (contextual) and its own value without it (decontextual).
No editors are evaluated, so ``--split test`` (the default) is every sample of the file and
``--split reference`` the reference's case ids 5000-9999 (``--small``: 5000-5999); a stored
result of other samples is refused (``--rerun`` replaces it). See
:mod:`remedi.evaluation.probing.mediation` and :mod:`remedi.evaluation.splits`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, data, env, errors, io, models, settings
from remedi.evaluation import splits
from remedi.evaluation.probing import mediation
from remedi.report import tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate fact mediation in and out of context")
    cli.add_arguments(parser)
    cli.add_name_and_model_arguments(parser)
    parser.add_argument(
        "--dataset-file", type=Path, help="ROME-format counterfact.json (default: the cache)"
    )
    parser.add_argument(
        "--counterfact-prompt",
        choices=data.COUNTERFACT_PROMPT_SOURCES,
        default="paraphrase",
        help="the prompt each sample asks (default: paraphrase, the reference's)",
    )
    cli.add_sample_evaluation_arguments(parser)
    splits.add_arguments(parser)
    args = parser.parse_args(argv)
    splits.check_arguments(parser, args, has_run=False)
    return args


def mediation_table(results: mediation.MediationResults, title: str) -> tables.Table:
    label = results.model + (" (random init)" if results.random_init else "")
    row = tables.TableRow(
        label,
        {
            "contextual": results.contextual.accuracy,
            "decontextual": results.decontextual.accuracy,
        },
    )
    return tables.Table(
        title=title,
        columns={"contextual": "Contextual", "decontextual": "Decontextual"},
        rows=[row],
        notes=[
            f"{len(results.contextual.samples)} samples. Contextual: share where the LM prefers "
            "the context's value (first token) after the context; decontextual: share where it "
            "prefers its own value without the context."
        ],
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = cli.device(args)
    experiment_dir = env.results_dir() / args.name
    results_file = experiment_dir / "mediation.json"
    samples = data.load_dataset(
        "counterfact", file=args.dataset_file, prompt_source=args.counterfact_prompt
    )
    entity_of = dict(zip(samples["id"], samples["entity"], strict=True))
    chosen = splits.select_split(
        "counterfact", samples["id"], entity_of, args.split, None, args.small
    )
    samples = data.select_ids(samples, chosen.ids)
    if args.max_samples is not None:
        samples = samples.select(range(min(args.max_samples, len(samples))))
    results = None
    if results_file.is_file() and not args.rerun:
        results = mediation.MediationResults.from_dict(io.read_json(results_file, "mediation"))
        stored = [sample.id for sample in results.contextual.samples]
        if stored != list(samples["id"]):
            raise errors.MismatchError(
                f"{results_file} holds the mediation of {len(stored)} other samples than the "
                f"{len(samples)} of {chosen.description}; pass --rerun to replace it, or "
                "evaluate under another experiment name (-n)"
            )
    if results is None:
        mt = models.load_model(
            args.model,
            device=device,
            dtype=args.dtype,
            random_init=args.random,
            experiment=settings.REMEDI,
        )
        results = mediation.mediation(mt, samples, args.batch_size, random_init=args.random)
        io.write_json(results_file, results.to_dict(), indent=None)
    table = mediation_table(results, f"{args.name}: fact mediation ({args.split} split)")
    table.notes.extend(chosen.notes)
    cli.write_and_show_table(table, experiment_dir, "summary", results=results_file)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
