"""Sweeps: many experiments run through ``submitit`` (Slurm, or its local executor), resumable.

A sweep YAML names base experiments and a grid of dotted-key overrides for each::

    output_dir: results/canon/sweeps/toy_works_for
    parallel: 1                 # local: jobs at once; slurm: the array's parallelism
    slurm: {partition: gpu, timeout_min: 240, gpus_per_node: 1, cpus_per_task: 4, mem_gb: 32}
    experiments:
      - config: ../toy_works_for_full.yaml          # relative to the sweep file
        grid: {training.learning_rate: [3.0e-4, 1.0e-3]}

Every grid point is one experiment in ``<output_dir>/<name>``; a finished one (its
``result.json``) is never rerun, so running the sweep again after an interruption runs only
what is left. :func:`sweep_status` counts done / running / failed / pending experiments (the
bookkeeping of :mod:`remedi.jobs`). ``slurm`` (optional) sets each Slurm job's resources; what it leaves
out is what the experiments need (:data:`remedi.jobs.NEEDS`): one GPU only for a real model not on
``device: cpu``, and 1 CPU and 4 GB for a toy-world model.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remedi import errors, jobs
from remedi.canon.config import (
    ExperimentConfig,
    _build,
    config_from_dict,
    load_config,
    with_overrides,
)
from remedi.canon.experiment import RESULT_FILE, output_dir, run_experiment
from remedi.jobs import SlurmSettings, status_line

logger = logging.getLogger(__name__)

EXECUTORS = jobs.EXECUTORS
STATES = jobs.STATES


@dataclass
class SweepEntry:
    """A base experiment and the grid of overrides (dotted key -> values) to run it with.

    ``overrides`` (dotted key -> value) are set in every experiment of the entry without
    entering its name; ``name`` starts the names instead of the base config's (a sampled
    config: ``country_capital_lora-s07``, :mod:`remedi.canon.search_space`).
    """

    config: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """A sweep file (see the module docstring)."""

    output_dir: str
    experiments: list[SweepEntry]
    parallel: int = 1
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


def _short(key: str) -> str:
    last = key.split(".")[-1]
    return {"learning_rate": "lr", "kl_weight": "kl", "l2_weight": "l2", "epochs": "ep"}.get(
        last, last
    )


def _value_label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).replace("/", "_")


def load_sweep(path: Path) -> tuple[SweepConfig, list[ExperimentConfig]]:
    """Read a sweep file and expand it into its experiments (each validated, named, placed)."""
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f"sweep file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    sweep: SweepConfig = _build(SweepConfig, data or {}, "", str(path))
    if sweep.parallel < 1:
        raise errors.UsageError(f"{path}: parallel must be at least 1, got {sweep.parallel}")
    root = Path(sweep.output_dir)
    experiments: list[ExperimentConfig] = []
    for entry in sweep.experiments:
        base = load_config(path.parent / entry.config)
        if entry.overrides:
            base = with_overrides(base, entry.overrides, f"{path} ({entry.config})")
        prefix = entry.name or base.name
        keys = list(entry.grid)
        for values in itertools.product(*(entry.grid[key] for key in keys)):
            overrides = dict(zip(keys, values, strict=True))
            name = "-".join(
                [prefix, *(f"{_short(k)}{_value_label(v)}" for k, v in overrides.items())]
            )
            overrides["name"] = name
            overrides["output_dir"] = str(root / name)
            experiments.append(with_overrides(base, overrides, f"{path} ({entry.config})"))
    names = Counter(config.name for config in experiments)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise errors.UsageError(
            f"{path}: experiments {repeated} appear twice; give the base configs distinct names"
        )
    return sweep, experiments


def experiment_state(directory: Path) -> str:
    """``done`` (result written), ``failed``, ``running`` or ``pending``
    (:func:`remedi.jobs.job_state`): an experiment whose process died without finishing (an
    interruption) is pending."""
    return jobs.job_state(directory, RESULT_FILE)


def sweep_status(experiments: list[ExperimentConfig]) -> dict[str, list[str]]:
    """Experiment names by state (every state present, possibly empty)."""
    named = [(config.name, output_dir(config)) for config in experiments]
    return jobs.job_states(named, RESULT_FILE)


def sweep_failures(experiments: list[ExperimentConfig]) -> dict[str, str]:
    """The failed experiments' errors, by name."""
    errors_by_name = {}
    for config in experiments:
        error = jobs.failure(output_dir(config))
        if error is not None and experiment_state(output_dir(config)) == "failed":
            errors_by_name[config.name] = error
    return errors_by_name


def run_configs(configs: list[dict[str, Any]]) -> dict[str, str]:
    """Run experiments one after another (a job's work); finished ones are skipped, a failed
    one is recorded (``failed.json``) and the next one runs."""
    outcome = {}
    for data in configs:
        config = config_from_dict(data, f"experiment {data.get('name')}")
        if experiment_state(output_dir(config)) == "done":
            outcome[config.name] = "skipped (done)"
            continue
        try:
            run_experiment(config)
            outcome[config.name] = "done"
        except Exception as error:  # recorded in failed.json; the sweep goes on
            logger.error("%s failed: %s", config.name, error)
            outcome[config.name] = f"failed: {error}"
    return outcome


def run_sweep(
    path: Path,
    executor_kind: str = "local",
    poll_seconds: float = 5.0,
    slurm: SlurmSettings | None = None,
) -> dict[str, list[str]]:
    """Submit every unfinished experiment of the sweep and wait, logging progress.

    Local: the pending experiments are dealt round-robin to ``parallel`` jobs, each running
    its share in turn. Slurm: one array job per experiment, with ``slurm`` (default: the sweep
    file's) resources. On Ctrl-C the jobs are cancelled (finished experiments stay finished) and
    the interruption propagates. A failed experiment is logged with its error, by name.
    """
    sweep, experiments = load_sweep(path)
    states = sweep_status(experiments)
    logger.info("sweep %s: %s", path, status_line(states))
    todo = [c for c in experiments if c.name in states["pending"] or c.name in states["failed"]]
    if not todo:
        return states
    jobs.submit_and_wait(
        run_configs,
        [config.to_dict() for config in todo],
        [config.name for config in todo],
        executor_kind,
        Path(sweep.output_dir) / "submitit",
        slurm or sweep.slurm,
        jobs.most_needs([jobs.work_needs(config.model, config.device) for config in todo]),
        sweep.parallel,
        lambda: status_line(sweep_status(experiments)),
        poll_seconds,
    )
    states = sweep_status(experiments)
    logger.info("sweep finished: %s", status_line(states))
    for name, error in sweep_failures(experiments).items():
        logger.error("experiment %s failed: %s", name, error)
    return states
