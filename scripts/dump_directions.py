"""Dump a trained editor's directions and the entity's hidden states before and after its edit.

    python -m scripts.dump_directions -n directions_counterfact_gptj \\
        -e results/editors_counterfact_gptj -m gptj --device cuda

writes ``results/NAME/<editor type>/<layer>/``: ``manifest.json`` and ``shard_*.safetensors``
(see :mod:`remedi.evaluation.probing.dump`, whose ``load_dump`` reads them back). Samples: the
held-out (test) split of the editors' training run; ``--split reference --small`` takes the rows
the reference dumps (5000-5999, its ``train[5000:6000]``). An interrupted dump resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import cli, env, models, settings, training
from remedi.evaluation import splits
from remedi.evaluation.probing import dump, probe_runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="dump an editor's directions for analysis")
    cli.add_arguments(parser)
    cli.add_name_and_model_arguments(parser)
    parser.add_argument("-e", "--editors-dir", type=Path, required=True, help="training run")
    parser.add_argument(
        "-l", "--layer", type=int, help="editor layer (default: the run's only one)"
    )
    parser.add_argument(
        "-t", "--editor-type", default="linear", help="editor type (default linear)"
    )
    parser.add_argument("--dataset-file", type=Path, help="dataset file (default: the run's)")
    parser.add_argument(
        "--max-samples", type=int, help="dump only the first N samples of the split"
    )
    splits.add_arguments(parser)
    cli.add_device_arguments(parser, settings.REMEDI)
    parser.add_argument("--batch-size", type=int, default=dump.DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--shard-size",
        type=int,
        default=dump.DEFAULT_SHARD_SIZE,
        help="samples per file (the most an interrupted dump recomputes)",
    )
    parser.add_argument("--rerun", action="store_true", help="replace a dump of other settings")
    args = parser.parse_args(argv)
    splits.check_arguments(parser, args, has_run=True)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record = training.load_run(args.editors_dir)
    layer = probe_runs.editor_layer(args.editors_dir, args.editor_type, args.layer)
    samples, chosen = probe_runs.split_samples(
        args.editors_dir, args.dataset_file, args.max_samples, args.split, args.small
    )
    mt = models.load_model(
        args.model,
        device=cli.device(args),
        dtype=args.dtype,
        random_init=record.args.random_init,
        experiment=settings.REMEDI,
    )
    editor = training.load_run_editor(args.editors_dir, layer, args.editor_type, mt)
    dump_settings = dump.DumpSettings(
        model=args.model,
        dataset=record.args.dataset,
        editors_dir=str(Path(args.editors_dir).resolve()),
        editor_type=args.editor_type,
        layer=layer,
        split=args.split,
        small=args.small,
        random_init=record.args.random_init,
        shard_size=args.shard_size,
        sample_ids=[str(sample["id"]) for sample in samples],
    )
    directory = env.results_dir() / args.name / args.editor_type / str(layer)
    manifest = dump.dump_directions(
        mt,
        editor,
        samples,
        directory,
        dump_settings,
        split_description=chosen.description,
        notes=chosen.notes,
        batch_size=args.batch_size,
        rerun=args.rerun,
    )
    print(
        f"dumped {len(manifest.samples)} samples ({chosen.description}; editor layer {layer}, "
        f"{manifest.num_layers} layers of {manifest.hidden_size}) to {directory}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
