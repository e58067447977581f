"""What many edits do to a model's general abilities: edit modes, checkpoints, RECT.

    python -m scripts.harm_run --model toy --method rome --mode instance-sequential \
        --edits 1,10,50,100 --editors results/editors_counterfact_toy
    python -m scripts.harm_run --model gpt2-xl --method memit --mode batch-sequential \
        --edits 10,100,1000 --batch-size 10 --edit-source zsre --rect 0.2
    python -m scripts.harm_run --model gpt2-xl --method rome --setting gu2024 \
        --mode instance-sequential --edit-source zsre --regularizer pca

writes ``results/NAME/checkpoint_<N>.json`` after each checkpoint (0 = unedited; finished
checkpoints are read back, never recomputed) and ``state_<N>.safetensors`` (the edited weights).
On a toy model (``toy``, ``toy-small``, ``toy-longtail``, ...: its world is found from the model's
name, and built if absent), the edits come from that world's CounterFact export unless
``--dataset-file`` or ``--editors`` say otherwise, the statistics of ROME and MEMIT run on that
world's text, and ``--tasks all`` is the three toy tasks about it (exported under
``results/NAME/tasks`` in the real formats); on other models, the harms paper's eight task sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remedi import cli, data, env, errors, evaluation, io, models, training
from remedi.data import general_tasks, zsre
from remedi.evaluation.general import abilities, harm
from remedi.methods import rect, registry
from remedi.methods.base import MethodSetup
from remedi.settings import GENERAL_ABILITIES
from remedi.toy import build
from remedi.toy import general as toy_general

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="general abilities after many edits")
    cli.add_arguments(parser)
    parser.add_argument("-m", "--model", required=True, help="model name, alias or directory")
    parser.add_argument("--method", required=True, choices=harm.harm_methods())
    parser.add_argument("--mode", required=True, help=f"one of {', '.join(harm.MODES)}")
    parser.add_argument(
        "--edits",
        help="comma-separated checkpoints (numbers of edits; default "
        f"{','.join(map(str, harm.DEFAULT_CHECKPOINTS))}, under batch-sequential rounded up to "
        "multiples of --batch-size)",
    )
    parser.add_argument("--batch-size", type=int, default=10, help="edits per batch")
    parser.add_argument(
        "--rect",
        type=float,
        nargs="?",
        const=rect.DEFAULT_SHARE,
        help=f"RECT: keep this share of each update's entries (alone: {rect.DEFAULT_SHARE})",
    )
    parser.add_argument(
        "--regularizer",
        choices=tuple(rect.REGULARIZERS),
        help="regularise each update with RECT or one of the paper's baselines (random "
        "zeroing, PCA), keeping the --rect share (default rect; given alone: share "
        f"{rect.DEFAULT_SHARE})",
    )
    parser.add_argument(
        "--setting",
        help="the method's packaged hyperparameter setting instead of its default file "
        "(rome: gu2024, ROME as Gu et al. ran it in EasyEdit: no covariance, 20 prefixes)",
    )
    parser.add_argument(
        "--tasks",
        default="all",
        help="comma-separated tasks, or all (toy: "
        f"{', '.join(toy_general.TOY_TASK_FILES)}; else {', '.join(general_tasks.TASK_FILES)})",
    )
    parser.add_argument("--task-limit", type=int, help="score only the first N items per task")
    parser.add_argument(
        "--protocols", default=",".join(abilities.PROTOCOLS), help="seed,loglik (real tasks)"
    )
    parser.add_argument(
        "--task-dir", type=Path, help="the paper's task-data (default: shared data edit_harms)"
    )
    parser.add_argument(
        "--edit-source",
        choices=("counterfact", "zsre"),
        default="counterfact",
        help="where edits come from (zsre: the paper's zsRE file with portability)",
    )
    parser.add_argument("--dataset-file", type=Path, help="counterfact.json or zsRE file")
    parser.add_argument(
        "--editors",
        type=Path,
        help="REMEDI training run (required for remedi; its test split is the edit source "
        "for every method when given)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the CounterFact edit order (shuffled) and of --regularizer random",
    )
    parser.add_argument("--lm-eval-tasks", help="comma-separated lm-evaluation-harness tasks")
    parser.add_argument("-n", "--name", help="experiment name (default from the settings)")
    cli.add_device_arguments(parser, GENERAL_ABILITIES)
    parser.add_argument("--score-batch-size", type=int, default=abilities.DEFAULT_BATCH_SIZE)
    return parser.parse_args(argv)


def _checkpoints(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise errors.UsageError(
            f"--edits must be comma-separated integers, got {text!r}"
        ) from error
    if not numbers or min(numbers) < 0:
        raise errors.UsageError(f"--edits needs non-negative checkpoints, got {text!r}")
    return numbers


def experiment_name(args: argparse.Namespace) -> str:
    """``harm_<model>_<method>[-<setting>]_<mode>[_b<batch>][_<regulariser><share>]``
    (``_rect0.2``, ``_random0.2``, ``_pca0.2``)."""
    model = Path(args.model).name
    method = f"{args.method}-{args.setting}" if args.setting else args.method
    name = f"harm_{model}_{method}_{args.mode}"
    if args.mode == "batch-sequential":
        name += f"_b{args.batch_size}"
    if args.rect is not None:
        name += f"_{args.regularizer or 'rect'}{args.rect:g}"
    return name


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.regularizer is not None and args.rect is None:
        args.rect = rect.DEFAULT_SHARE
    if args.mode not in harm.MODES:
        raise errors.UsageError(f"unknown edit mode {args.mode!r}; known: {', '.join(harm.MODES)}")
    batching = harm.batching_methods()
    if args.method not in batching and args.mode == "batch-single":
        raise errors.UsageError(
            f"method {args.method!r} edits one fact at a time and cannot batch; use "
            f"--mode instance-sequential or batch-sequential, or {' or '.join(batching)}"
        )
    if args.edits is None:
        checkpoints = harm.default_checkpoints(args.mode, args.batch_size)
    else:
        checkpoints = _checkpoints(args.edits)
    harm.check_checkpoints(args.mode, checkpoints, args.batch_size)
    toy_world = build.toy_world_of_model(args.model)
    if toy_world is not None:
        # Loading the model would build the world too; its facts and tasks are needed first.
        build.ensure_toy_world(toy_world.name)
    output_dir = env.results_dir() / (args.name or experiment_name(args))
    device = cli.device(args)

    if args.edit_source == "zsre":
        file = args.dataset_file or env.shared_data_dir() / "edit_harms" / "edited-data" / (
            "zsre_mend_eval_portability_gpt4.json"
        )
        edits = harm.zsre_edits(zsre.load_zsre(file))
    else:
        test_ids = None
        # A toy model is edited with its own world's facts unless told otherwise.
        dataset_file = args.dataset_file or (toy_world.counterfact_file if toy_world else None)
        if args.editors is not None:
            run = training.load_run(args.editors)
            test_ids = list(run.split.test)
            if args.dataset_file is None and run.args.dataset_file:
                dataset_file = Path(run.args.dataset_file)
        records = data.load_counterfact_records(dataset_file)
        edits = harm.counterfact_edits(evaluation.counterfact_cases(records, test_ids))
        if test_ids is None and toy_world is not None and args.dataset_file is None:
            # Without an editors run to take the test split from, edit the world's test
            # people only: the toy tasks ask about people no edit can touch, and with every
            # person a candidate they would be empty.
            test_people = build.load_world(toy_world.name).entities_of_split("test")
            edits = [edit for edit in edits if edit.request.subject in test_people]
        # Shuffled so that consecutive edits are about different entities (CounterFact lists
        # an entity's facts together); the same seed gives every method the same sequence.
        # zsRE edits keep the file order, as the seed repository takes them.
        random.Random(args.seed).shuffle(edits)
    # Toy tasks never ask about an entity that any edit of the source could touch, whatever
    # the number of edits asked for (so that runs with other --edits share the tasks).
    candidate_entities = {edit.request.subject for edit in edits}
    edits = edits[: max(checkpoints)]

    if args.tasks == "all":
        tasks = list(toy_general.TOY_TASK_FILES if toy_world else general_tasks.TASK_FILES)
    else:
        tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    task_dir = args.task_dir or env.shared_data_dir() / "edit_harms" / "task-data"
    if any(task in toy_general.TOY_TASK_FILES for task in tasks):
        if toy_world is None:
            raise errors.UsageError(
                f"toy tasks ask about a toy world's facts, but {args.model!r} is no toy world's "
                "model; pass a toy model (e.g. --model toy-small) or the paper's --tasks"
            )
        world = build.load_world(toy_world.name)
        task_dir = output_dir / "tasks"
        toy_general.export_toy_tasks(world, task_dir, candidate_entities, args.task_limit or 200)
    task_items = harm.load_task_items(tasks, task_dir, args.task_limit)
    empty = [task for task, items in task_items.items() if not items]
    if empty:
        raise errors.UsageError(
            f"no items for task(s) {', '.join(empty)} under {task_dir}: the toy tasks ask only "
            f"about people that none of the {len(candidate_entities)} people this run may edit "
            "is; edit fewer people (--editors RUN draws the edits from its test split) or pick "
            "--tasks with items"
        )

    mt = models.load_model(
        args.model, device=device, dtype=args.dtype, experiment=GENERAL_ABILITIES
    )
    options: dict[str, Any] = {}
    if registry.method_spec(args.method).edits == "hidden_states":
        if args.editors is None:
            raise errors.UsageError(
                f"--method {args.method} needs --editors (a REMEDI training run)"
            )
        options["editors_dir"] = str(args.editors)
    setup = MethodSetup(stats_dir=env.results_dir() / "stats")
    method = harm.editing_method(args.method, mt, setup, args.setting, **options)
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    settings = harm.HarmSettings(
        method=args.method,
        mode=args.mode,
        checkpoints=checkpoints,
        batch_size=args.batch_size,
        rect_share=args.rect,
        protocols=protocols,
        score_batch_size=args.score_batch_size,
        regularizer=args.regularizer or "rect",
        seed=args.seed,
        hparams_setting=args.setting,
    )
    results = harm.run_harm(mt, method, edits, task_items, settings, output_dir)
    if args.lm_eval_tasks:
        scores = harm.lm_eval_scores(mt, args.lm_eval_tasks.split(","))
        io.write_json(output_dir / "lm_eval.json", scores)
    for checkpoint in results:
        row: dict[str, Any] = {"edits": checkpoint.num_edits}
        if checkpoint.edits is not None:
            row.update(checkpoint.edits.to_dict())
        row.update({f"{t.task}/{t.protocol}": round(t.score, 4) for t in checkpoint.tasks})
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
