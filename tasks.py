"""Invoke tasks: install, the presubmit gate, and the experiments (`x.*`).

Experiments call the thin scripts in ``scripts/`` with the paper's settings baked in;
everything they compute lives in the ``remedi`` package. Run ``invoke --list`` to see them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
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


def _layer_for(model: str, layer: int | None) -> int:
    if layer is not None:
        return layer
    if model in COUNTERFACT_LAYERS:
        return COUNTERFACT_LAYERS[model]
    raise Exit(
        f"no default CounterFact layer is known for model {model!r}; pass --layer N "
        f"(known defaults: {', '.join(sorted(COUNTERFACT_LAYERS))})",
        code=EXIT_BAD_INPUT,
    )


def _toy_dataset_args(model: str) -> list[str]:
    """For a toy-world model, point the scripts at that world's CounterFact export."""
    if not model.startswith("toy"):
        return []
    from remedi.errors import RemediError
    from remedi.toy.build import ensure_toy_world

    try:
        paths = ensure_toy_world(model)
    except RemediError as error:  # e.g. an unknown toy world: its message says the names
        raise Exit(str(error), code=EXIT_BAD_INPUT) from error
    return ["--dataset-file", str(paths.counterfact_file)]


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
        "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the offline default).",
        "device": "Device, e.g. cuda or cpu (default: cuda if available).",
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
    random_suffix = "_random" if random else ""
    args = [
        "-n",
        name or f"editors_counterfact_{_model_slug(model)}{random_suffix}",
        "-m",
        model,
        "-d",
        "counterfact",
        "-l",
        str(_layer_for(model, layer)),
        *_toy_dataset_args(model),
        *(TOY_TRAINING_FLAGS if model.startswith("toy") else []),
        "--counterfact-prompt",
        prompt,
        "--seed",
        str(seed),
    ]
    if device:
        args += ["--device", device]
    if max_epochs is not None:
        args += ["--max-epochs", str(max_epochs)]
    if clear_results:
        args.append("--clear-results")
    if random:
        args.append("--random")
    _python(c, "scripts.train_editors", args)


@task(
    help={
        "model": f"Model name or alias (default {DEFAULT_MODEL}; 'toy' for the offline default).",
        "device": "Device, e.g. cuda or cpu (default: cuda if available).",
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
    from remedi.env import results_dir

    random_suffix = "_random" if random else ""
    default_editors = f"editors_counterfact_{_model_slug(model)}{random_suffix}"
    editors_dir = results_dir() / (editors or default_editors)
    if not editors_dir.is_dir():
        raise Exit(
            f"no trained editors for model {model!r} at {editors_dir}; train them first with\n"
            f"    invoke x.train.counterfact --model {model}"
            + (" --random" if random else "")
            + (f" --device {device}" if device else ""),
            code=EXIT_BAD_INPUT,
        )
    args = [
        "-n",
        name or f"eval_gen_counterfact_{_model_slug(model)}{random_suffix}",
        "-e",
        str(editors_dir),
        "-m",
        model,
        "-l",
        str(_layer_for(model, layer)),
        "--baselines",
        "prefix",
        "replace",
        "unedited",
        *_toy_dataset_args(model),
    ]
    if device:
        args += ["--device", device]
    if rerun:
        args.append("--rerun")
    if random:
        args.append("--random")
    if methods:
        args += ["--methods", methods]
    if stats_dataset:
        args += ["--stats-dataset", stats_dataset]
    _python(c, "scripts.eval_fact_gen", args)


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
    saved = {key: os.environ.get(key) for key in ("REMEDI_MODELS_DIR", "REMEDI_DATA_DIR")}
    os.environ["REMEDI_MODELS_DIR"] = str(env.models_dir() / f"seed-{seed}")
    os.environ["REMEDI_DATA_DIR"] = str(env.data_dir() / f"seed-{seed}")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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


toy = Collection("toy")
toy.add_task(toy_build, name="build", default=True)

train = Collection("train")
train.add_task(train_counterfact, name="counterfact")

gen = Collection("gen")
gen.add_task(eval_gen_counterfact, name="counterfact")
evaluate = Collection("eval")
evaluate.add_collection(gen)

x = Collection("x")
x.add_collection(toy)
x.add_collection(train)
x.add_collection(evaluate)
x.add_task(quickstart)

presubmit_collection = Collection("presubmit")
presubmit_collection.add_task(presubmit, name="all", default=True)
presubmit_collection.add_task(lint)
presubmit_collection.add_task(mypy)
presubmit_collection.add_task(pytest)

ns = Collection()
ns.add_task(install)
ns.add_collection(presubmit_collection)
ns.add_collection(x)
