"""Sweeps: many experiments run through ``submitit`` (Slurm, or its local executor), resumable.

A sweep YAML names base experiments and a grid of dotted-key overrides for each::

    output_dir: results/canon/sweeps/toy_works_for
    parallel: 1                 # local: jobs at once; slurm: the array's parallelism
    experiments:
      - config: ../toy_works_for_full.yaml          # relative to the sweep file
        grid: {training.learning_rate: [3.0e-4, 1.0e-3]}

Every grid point is one experiment in ``<output_dir>/<name>``; a finished one (its
``result.json``) is never rerun, so running the sweep again after an interruption runs only
what is left. :func:`sweep_status` counts done / running / failed / pending experiments.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remedi import errors, io
from remedi.canon.config import (
    ExperimentConfig,
    _build,
    config_from_dict,
    load_config,
    with_overrides,
)
from remedi.canon.experiment import (
    FAILED_FILE,
    RESULT_FILE,
    STATUS_FILE,
    output_dir,
    run_experiment,
)

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
STATES = ("done", "running", "failed", "pending")


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
class SlurmSettings:
    """Resources of each Slurm job (``partition`` None: the cluster's default)."""

    partition: str | None = None
    timeout_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: int = 32


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def experiment_state(directory: Path) -> str:
    """``done`` (result written), ``failed``, ``running`` (a live process), else ``pending``.

    A run whose process died on this host without finishing (an interruption) is pending.
    """
    directory = Path(directory)
    if (directory / RESULT_FILE).is_file():
        return "done"
    if (directory / FAILED_FILE).is_file():
        return "failed"
    status_path = directory / STATUS_FILE
    if status_path.is_file():
        status = io.read_json(status_path, "experiment status")
        elsewhere = status.get("host") != socket.gethostname()
        if status.get("state") == "running" and (elsewhere or _pid_alive(int(status["pid"]))):
            return "running"
    return "pending"


def sweep_status(experiments: list[ExperimentConfig]) -> dict[str, list[str]]:
    """Experiment names by state (every state present, possibly empty)."""
    states: dict[str, list[str]] = {state: [] for state in STATES}
    for config in experiments:
        states[experiment_state(output_dir(config))].append(config.name)
    return states


def status_line(states: dict[str, list[str]]) -> str:
    """``"3 done, 1 running, 0 failed, 4 pending (of 8)"``."""
    total = sum(len(names) for names in states.values())
    counts = ", ".join(f"{len(states[state])} {state}" for state in STATES)
    return f"{counts} (of {total})"


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


def _executor(kind: str, folder: Path, sweep: SweepConfig) -> Any:
    import submitit

    if kind not in EXECUTORS:
        raise errors.UsageError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    if kind == "slurm":
        slurm = sweep.slurm
        executor.update_parameters(
            timeout_min=slurm.timeout_min,
            gpus_per_node=slurm.gpus_per_node,
            cpus_per_task=slurm.cpus_per_task,
            mem_gb=slurm.mem_gb,
            slurm_array_parallelism=sweep.parallel,
            **({"slurm_partition": slurm.partition} if slurm.partition else {}),
        )
    else:
        executor.update_parameters(timeout_min=24 * 60)
    return executor


def run_sweep(
    path: Path, executor_kind: str = "local", poll_seconds: float = 5.0
) -> dict[str, list[str]]:
    """Submit every unfinished experiment of the sweep and wait, logging progress.

    Local: the pending experiments are dealt round-robin to ``parallel`` jobs, each running
    its share in turn. Slurm: one array job per experiment. On Ctrl-C the jobs are cancelled
    (finished experiments stay finished) and the interruption propagates.
    """
    sweep, experiments = load_sweep(path)
    states = sweep_status(experiments)
    logger.info("sweep %s: %s", path, status_line(states))
    todo = [c for c in experiments if c.name in states["pending"] or c.name in states["failed"]]
    if not todo:
        return states
    executor = _executor(executor_kind, Path(sweep.output_dir) / "submitit", sweep)
    if executor_kind == "local":
        shares = [todo[i :: sweep.parallel] for i in range(min(sweep.parallel, len(todo)))]
        jobs = [executor.submit(run_configs, [c.to_dict() for c in share]) for share in shares]
    else:
        with executor.batch():
            jobs = [executor.submit(run_configs, [c.to_dict()]) for c in todo]
    logger.info("submitted %d %s jobs for %d experiments", len(jobs), executor_kind, len(todo))
    last = ""
    try:
        while not all(job.done() for job in jobs):
            line = status_line(sweep_status(experiments))
            if line != last:
                logger.info("sweep: %s", line)
                last = line
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        logger.warning("sweep interrupted: %s", status_line(sweep_status(experiments)))
        raise
    for job in jobs:
        try:
            job.result()
        except Exception as error:  # a job that died (not an experiment that failed)
            logger.error("job %s died: %s", job.job_id, error)
    states = sweep_status(experiments)
    logger.info("sweep finished: %s", status_line(states))
    return states
