"""Model editing with canonical examples (Hewitt et al. 2024): experiments, sweeps, reports.

- :mod:`remedi.canon.config`: the experiment YAML schema, validated on load;
- :mod:`remedi.canon.methods`: how a registered method (``full``, ``lora``, ``memit``, ...)
  changes the model in an experiment;
- :mod:`remedi.canon.remedi_method`: ``remedi``, an editor's directions at the examples' entities;
- :mod:`remedi.canon.scoring`: suffix and text NLLs, the training losses, the seed's scores;
- :mod:`remedi.canon.experiment`: train, evaluate every epoch, write ``result.json``;
- :mod:`remedi.canon.sweep`: many experiments through ``submitit``, resumable;
- :mod:`remedi.canon.search_space`: the seed's sampled search as sweep files;
- :mod:`remedi.canon.report`: per bound, the best validation config -> N test runs stopped at the
  val epoch -> mean ± standard error.

The data (the six tasks' files, the toy world's task) is in :mod:`remedi.data.canonical` and
:mod:`remedi.toy.canonical`.
"""

from __future__ import annotations

# Registers the toy world's tasks next to the six real ones.
import remedi.toy.canonical  # noqa: F401
from remedi.canon.config import (
    LOSS_TYPES,
    ExperimentConfig,
    config_from_dict,
    load_config,
    with_overrides,
)
from remedi.canon.experiment import (
    SEED_BOUNDS,
    EpochStats,
    ExperimentResult,
    read_result,
    run_experiment,
)
from remedi.canon.methods import canon_methods
from remedi.canon.remedi_method import EditedModel

__all__ = [
    "LOSS_TYPES",
    "SEED_BOUNDS",
    "EditedModel",
    "EpochStats",
    "ExperimentConfig",
    "ExperimentResult",
    "canon_methods",
    "config_from_dict",
    "load_config",
    "read_result",
    "run_experiment",
    "with_overrides",
]
