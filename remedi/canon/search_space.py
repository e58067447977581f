"""The seed's hyperparameter search, as sweep files (``configs/canon/sweeps/seed_<task>_<model>.yaml``).

Hewitt et al. sample 25 configs per method and task (``configs/<task>/*_sweep/make_sweep.py``,
e.g. ``country_capital/pythia_sweep/make_sweep.py``, cited below as ``make_sweep.py``), the
same ranges for every task and model:

- full fine-tuning: learning rate ``10**-U(4, 8.5)`` (line 14);
- LoRA: learning rate ``10**-U(2, 6.5)`` (line 16), rank uniform in 1..256 (lines 52-53), alpha 8
  and dropout 0 (its ``example_lora.yaml``), on the MLP projections of a block of layers centred
  on the middle layer covering ``ceil(U(0.1, 0.9) * layers)`` of them (lines 39, 136-147; the
  block's ``range(start, end + 1)`` holds one layer more than that count, and a layer past the
  last, which its pattern cannot match, is dropped here);
- always KL to the original model (line 57), weight ``10**U(-1, 0)`` (line 25), on one text per
  step (its ``regularize.py:20,23``: the training batch size);
- 10 epochs, batch size 1, 5 gradient-accumulation steps (lines 83, 100-102).

Its loop over seeds 0 and 1 (line 69) draws new configs for each seed into file names without
the seed (line 123), so seed 1's files replace seed 0's, and no code of the seed reads the seed.
Here each of the 25 configs runs with seeds 0 and 1. The draws use Python's ``random`` seeded
with the seed's number (line 10) and the task and model names, so the files are reproducible:
:func:`write_seed_sweeps` regenerates them byte for byte.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from remedi import io

SEARCH_SEED = 876545987
"""The seed's ``np.random.seed`` and ``random.seed`` (``make_sweep.py:10-11``)."""
CONFIGS_PER_METHOD = 25
RUN_SEEDS = (0, 1)
FULL_LR_EXPONENT = (4.0, 8.5)
LORA_LR_EXPONENT = (2.0, 6.5)
KL_WEIGHT_EXPONENT = (-1.0, 0.0)
LORA_RANK = (1, 256)
LORA_LAYER_FRACTION = (0.1, 0.9)
LORA_ALPHA = 8.0
EPOCHS = 10
BATCH_SIZE = 1
GRAD_ACC_STEPS = 5
KL_BATCH_SIZE = 1
SEED_TASKS = (
    "country_capital",
    "company_ceo",
    "pronoun_gender_bias",
    "temporal",
    "stereoset",
    "verb_conjugation",
)


@dataclass(frozen=True)
class SearchModel:
    """What the search needs of a model: its name in configs, its layer count and the names of
    a layer's MLP projections (``{layer}`` is the block's index)."""

    name: str
    layers: int
    mlp_modules: tuple[str, ...]


GPT2 = SearchModel("gpt2", 12, ("h.{layer}.mlp.c_fc", "h.{layer}.mlp.c_proj"))


def lora_block(layers: int, fraction: float) -> list[int]:
    """The seed's centred block of layers for a sampled fraction (``make_sweep.py:137-146``)."""
    middle = layers // 2
    count = math.ceil(layers * fraction)
    start = middle - count // 2
    end = middle + count // 2 + (count % 2)
    return [layer for layer in range(start, end + 1) if 0 <= layer < layers]


def sample_overrides(method: str, model: SearchModel, rng: random.Random) -> dict[str, Any]:
    """One sampled config of ``method`` (``full`` or ``lora``) as dotted-key overrides."""
    kl_weight = 10.0 ** rng.uniform(*KL_WEIGHT_EXPONENT)
    if method == "full":
        return {
            "training.learning_rate": 10.0 ** -rng.uniform(*FULL_LR_EXPONENT),
            "regularization.kl_weight": kl_weight,
        }
    learning_rate = 10.0 ** -rng.uniform(*LORA_LR_EXPONENT)
    rank = rng.randint(*LORA_RANK)
    block = lora_block(model.layers, rng.uniform(*LORA_LAYER_FRACTION))
    return {
        "training.learning_rate": learning_rate,
        "regularization.kl_weight": kl_weight,
        "method.lora_rank": rank,
        "method.lora_targets": [
            module.format(layer=layer) for layer in block for module in model.mlp_modules
        ],
    }


def base_config(method: str, model: SearchModel) -> dict[str, Any]:
    """The settings every sampled config of ``method`` shares (the task is set per sweep)."""
    config: dict[str, Any] = {
        "model": model.name,
        "task": SEED_TASKS[0],
        "split": "val",
        "method": {"name": method},
        "training": {
            "epochs": EPOCHS,
            "batch_size": BATCH_SIZE,
            "grad_acc_steps": GRAD_ACC_STEPS,
        },
        # Always on; each sampled config sets its weight (here the range's geometric middle).
        "regularization": {
            "kl_weight": 10.0 ** (sum(KL_WEIGHT_EXPONENT) / 2),
            "kl_batch_size": KL_BATCH_SIZE,
        },
        "evaluation": {"batch_size": 8},
    }
    if method == "lora":
        config["method"].update({"lora_alpha": LORA_ALPHA, "lora_dropout": 0.0})
    return config


def seed_sweep(task: str, model: SearchModel, base_files: dict[str, str]) -> dict[str, Any]:
    """The sweep file of ``task``: 25 sampled configs per method, each run with seeds 0 and 1."""
    rng = random.Random(f"{SEARCH_SEED}-{task}-{model.name}")
    experiments = []
    for method in ("full", "lora"):
        for index in range(CONFIGS_PER_METHOD):
            experiments.append(
                {
                    "config": base_files[method],
                    "name": f"{task}_{method}-s{index:02d}",
                    "overrides": {"task": task, **sample_overrides(method, model, rng)},
                    "grid": {"seed": list(RUN_SEEDS)},
                }
            )
    return {
        "output_dir": f"results/canon/sweeps/seed_{task}_{model.name}",
        "parallel": 4,
        "experiments": experiments,
    }


HEADER = (
    "# Generated by `python -m scripts.canon seed-sweeps` (remedi/canon/search_space.py): the seed's\n"
    "# search ({what}); do not edit by hand.\n"
)


def write_seed_sweeps(directory: Path, model: SearchModel = GPT2) -> list[Path]:
    """Write the two base configs to ``directory`` and one sweep per task to
    ``directory/sweeps``; returns the paths written."""
    directory = Path(directory)
    written = []
    base_files = {}
    for method in ("full", "lora"):
        path = directory / f"seed_{model.name}_{method}.yaml"
        text = yaml.safe_dump(base_config(method, model), sort_keys=False)
        io.write_text(path, HEADER.format(what=f"{method}, shared settings") + text)
        base_files[method] = f"../{path.name}"
        written.append(path)
    for task in SEED_TASKS:
        path = directory / "sweeps" / f"seed_{task}_{model.name}.yaml"
        text = yaml.safe_dump(seed_sweep(task, model, base_files), sort_keys=False)
        io.write_text(path, HEADER.format(what=f"{task} on {model.name}") + text)
        written.append(path)
    return written
