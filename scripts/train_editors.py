"""Train REMEDI editors: one per (editor type, layer), saved under results/NAME/.

    python -m scripts.train_editors -n my_run -m gpt2-xl -d counterfact -l 0 1 2 --lam-kl 6.25

(6.25 is the reference README's ``--lam-kl 100`` at batch 16: see ``--lam-kl``'s help) writes
``results/NAME/args.json`` (arguments, seed, train/validation/test sample ids) and
``results/NAME/<editor_type>/<layer>/{weights.safetensors,config.json,train_log.json}``.
Editors already saved are skipped on a re-run; ``--clear-results`` retrains them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from remedi import cli, data, editors, models, settings, training


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="train one REMEDI editor per type and layer")
    cli.add_arguments(parser)
    cli.add_name_and_model_arguments(parser)
    parser.add_argument(
        "-d", "--dataset", default="counterfact", choices=sorted(data.DATASET_LOADERS)
    )
    parser.add_argument(
        "-l", "--layers", type=int, nargs="+", help="layers to train at (default: all)"
    )
    parser.add_argument(
        "-t",
        "--editor-types",
        nargs="+",
        default=["linear"],
        choices=list(editors.EDITOR_TYPES),
        help="editor types to train (default: linear)",
    )
    parser.add_argument("--max-epochs", type=int, default=training.DEFAULT_MAX_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=training.DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=training.DEFAULT_LR)
    parser.add_argument(
        "--patience",
        type=int,
        default=training.DEFAULT_PATIENCE,
        help="stop after this many epochs without a better validation loss",
    )
    parser.add_argument(
        "--lam-kl",
        type=float,
        default=training.DEFAULT_LAM_KL,
        help="KL weight (default: %(default)s, the reference's lam_kl "
        f"{training.REFERENCE_LAM_KL:g} at its batch size {training.REFERENCE_BATCH_SIZE}: our "
        "term averages every sample's KL where the reference kept the last one, so a reference "
        "value L at batch B is L / B here)",
    )
    parser.add_argument("--lam-m", type=float, default=training.DEFAULT_LAM_M)
    parser.add_argument(
        "--lam-u", type=float, help="log(1 - p(unmediated)) weight (default: 1 for CounterFact)"
    )
    parser.add_argument("--lam-norm", type=float, help="direction norm weight (default: off)")
    parser.add_argument("--lam-ess", type=float, help="essence penalty weight (default: off)")
    parser.add_argument(
        "--lam-rel",
        type=float,
        help="weight of the relation term (not in REMEDI; default: off): KL at the end of "
        "prompts about the sample's entity under its other relations, from the dataset's "
        "relation templates (CounterFact-format data only)",
    )
    parser.add_argument(
        "--max-relation-prompts",
        type=int,
        default=data.DEFAULT_MAX_RELATION_PROMPTS,
        help="prompts about other relations per sample for --lam-rel (default: %(default)s)",
    )
    parser.add_argument(
        "--kl-direction",
        default=training.DEFAULT_KL_DIRECTION,
        choices=training.KL_DIRECTIONS,
        help="direction of the KL terms (default: %(default)s, the reference's)",
    )
    parser.add_argument(
        "--hold-out",
        type=float,
        default=training.DEFAULT_HOLD_OUT,
        help="fraction of the training pool held out (by entity) for early stopping",
    )
    parser.add_argument(
        "--test-size",
        type=float,
        default=training.DEFAULT_TEST_SIZE,
        help="fraction of the dataset held out (by entity) for evaluation, never trained on",
    )
    parser.add_argument(
        "--max-train-samples",
        type=int,
        default=training.DEFAULT_MAX_TRAIN_SAMPLES,
        help="use the first N samples of the training pool (train + validation)",
    )
    parser.add_argument(
        "--use-entity", action="store_true", help="linear/mlp editors also read the entity"
    )
    parser.add_argument(
        "--use-all-entity-tokens",
        action="store_true",
        help="read the mean over the entity's tokens and edit all of them (default: last token)",
    )
    parser.add_argument(
        "--use-last-attribute-token",
        action="store_true",
        help="read the attribute's last token instead of the mean over its tokens",
    )
    parser.add_argument("--rank", type=int, help="rank of the linear editor (default: full)")
    parser.add_argument("--device", help="e.g. cuda or cpu (default: cuda if available)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--dtype", help=settings.dtype_help(settings.REMEDI))
    precision.add_argument("--fp16", action="store_true", help="same as --dtype float16")
    parser.add_argument("--dataset-file", help="local dataset file (e.g. counterfact.json)")
    parser.add_argument(
        "--counterfact-prompt",
        default="paraphrase",
        choices=data.COUNTERFACT_PROMPT_SOURCES,
        help="CounterFact samples' prompt: the cleaned first paraphrase prompt, as in the "
        "REMEDI reference (default), or the rewrite prompt",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=data.BIOSBIAS_MAX_RECORDS,
        help="Bias in Bios: read only the first N records of the file (default: %(default)s, "
        "the reference's; 0: all)",
    )
    parser.add_argument(
        "--precompute-batch-size", type=int, default=64, help="batch size for hidden states"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--random",
        action="store_true",
        help="train on the randomly initialised model (same architecture and tokenizer, seed "
        f"{models.RANDOM_INIT_SEED}), the paper's control model",
    )
    parser.add_argument(
        "--clear-results", action="store_true", help="retrain editors that are already saved"
    )
    return parser.parse_args(argv)


def run_args(args: argparse.Namespace) -> training.RunArgs:
    """The library's run arguments from the parsed command line."""
    return training.RunArgs(
        name=args.name,
        model=args.model,
        dataset=args.dataset,
        layers=args.layers,
        editor_types=list(dict.fromkeys(args.editor_types)),
        dataset_file=args.dataset_file,
        random_init=args.random,
        counterfact_prompt=args.counterfact_prompt,
        biosbias_max_records=args.max_records,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        lam_m=args.lam_m,
        lam_u=args.lam_u,
        lam_kl=args.lam_kl,
        lam_norm=args.lam_norm,
        lam_ess=args.lam_ess,
        lam_rel=args.lam_rel,
        max_relation_prompts=args.max_relation_prompts,
        kl_direction=args.kl_direction,
        hold_out=args.hold_out,
        test_size=args.test_size,
        max_train_samples=args.max_train_samples,
        use_entity=args.use_entity,
        use_all_entity_tokens=args.use_all_entity_tokens,
        use_last_attribute_token=args.use_last_attribute_token,
        rank=args.rank,
        device=cli.device(args),
        dtype="float16" if args.fp16 else args.dtype,
        precompute_batch_size=args.precompute_batch_size,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    directory = training.train_run(run_args(args), clear_results=args.clear_results)
    for editor_type, layers in training.list_run_editors(directory).items():
        print(f"{editor_type}: layers {', '.join(map(str, layers))}")
    print(f"editors saved under {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
