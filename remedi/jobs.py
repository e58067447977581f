"""Jobs: the pieces of a long experiment, run on this machine or on a Slurm cluster, resumable.

A long experiment is many independent jobs: a canonical sweep's experiments, a layer sweep's
layers, the harm runs' method x mode pairs, the editing problems' layers. Each job keeps its
state in its own directory, so any run of the experiment knows what is left:

- ``done``: its done file is there (``done.json``; a canonical experiment's ``result.json``);
- ``failed``: ``failed.json`` holds its error (the job is run again by the next run);
- ``running``: ``status.json`` says running, and its Slurm job is in the queue, or (outside
  Slurm) its process is alive, or it runs on another host;
- ``pending``: anything else, such as a job whose process died (an interruption).

:func:`submit_and_wait` submits the unfinished jobs through ``submitit``: ``local`` deals them to
``parallel`` processes on this machine, ``slurm`` submits one array task per job with the
resources of :class:`SlurmSettings` (by default what the work needs: a toy-world model asks one CPU,
4 GB and no GPU; a real model 4 CPUs, 32 GB and, unless it runs on CPU, one GPU). A submission the cluster rejects raises
:class:`SubmissionError`, naming the resource and the fix. The queue is polled with ``sacct``
where the cluster keeps accounting, else with ``squeue`` (one-node clusters often have no
accounting daemon).

A job that runs commands (:class:`CommandJob`: ``python -m scripts.X ...`` in turn) writes their
output to ``log.txt`` in its directory and, when one fails, its last line to ``failed.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remedi import errors, io

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
STATES = ("done", "running", "failed", "pending")
DONE_FILE = "done.json"
STATUS_FILE = "status.json"
FAILED_FILE = "failed.json"
LOG_FILE = "log.txt"
# Slurm job states in which a job still holds (or waits for) its place in the queue.
QUEUED_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING")
INSTALL_SLURM = (
    "a Slurm cluster's client commands (sbatch, squeue); on Debian or Ubuntu a one-node cluster "
    "for trying it comes from `apt-get install slurm-wlm munge` (see README, 'Long experiments "
    "on Slurm')"
)


# ---------------------------------------------------------------------------------------------
# Resources.


@dataclass
class SlurmSettings:
    """Resources of each Slurm job; a field left None takes the default of the work's
    :data:`NEEDS` (``partition`` None: the cluster's default partition)."""

    partition: str | None = None
    timeout_min: int = 240
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None

    def resolved(self, needs: str) -> SlurmSettings:
        """These settings with every open resource set to the default of ``needs``."""
        gpus, cpus, mem = NEEDS[needs]
        return dataclasses.replace(
            self,
            gpus_per_node=gpus if self.gpus_per_node is None else self.gpus_per_node,
            cpus_per_task=cpus if self.cpus_per_task is None else self.cpus_per_task,
            mem_gb=mem if self.mem_gb is None else self.mem_gb,
        )


# What a job asks by default (GPUs per node, CPUs, GB of memory), by what its work needs: a toy
# world's model (what the one-node runs fit in), a real model on CPU, one on a GPU.
NEEDS = {"toy": (0, 1, 4), "cpu": (0, 4, 32), "gpu": (1, 4, 32)}


# The short names of ``--slurm key=value,...`` and the fields they set.
SLURM_SPEC_KEYS = {
    "partition": "partition",
    "time": "timeout_min",
    "cpus": "cpus_per_task",
    "mem": "mem_gb",
    "gpus": "gpus_per_node",
}


def parse_slurm_spec(spec: str, base: SlurmSettings | None = None) -> SlurmSettings:
    """``"partition=gpu,time=120,cpus=4,mem=16,gpus=1"`` over ``base`` (default: the defaults).

    ``time`` is in minutes, ``mem`` in GB per job, ``gpus`` per node.
    """
    settings = dataclasses.replace(base) if base is not None else SlurmSettings()
    known = ", ".join(f"{key}=" for key in SLURM_SPEC_KEYS)
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or key not in SLURM_SPEC_KEYS or not value.strip():
            raise errors.UsageError(
                f"--slurm takes key=value pairs separated by commas ({known}), e.g. "
                f"'partition=gpu,time=120,gpus=1'; got {item!r}"
            )
        field = SLURM_SPEC_KEYS[key]
        if field == "partition":
            settings.partition = value.strip()
            continue
        try:
            number = int(value)
        except ValueError:
            raise errors.UsageError(f"--slurm {key}= takes a whole number; got {value!r}") from None
        if number < (0 if field == "gpus_per_node" else 1):
            raise errors.UsageError(f"--slurm {key}= must be positive; got {number}")
        setattr(settings, field, number)
    return settings


def work_needs(model: str, device: str | None) -> str:
    """The :data:`NEEDS` of work on ``model``: ``toy`` for a toy-world model, ``cpu`` with
    ``--device cpu``, else ``gpu``."""
    from remedi import settings

    if settings.is_toy(model):
        return "toy"
    if device is not None and device.startswith("cpu"):
        return "cpu"
    return "gpu"


def most_needs(needs: Sequence[str]) -> str:
    """The largest of several works' :data:`NEEDS` (one setting covers every job of a run)."""
    order = list(NEEDS)
    return max(needs, key=order.index, default="toy")


# ---------------------------------------------------------------------------------------------
# Bookkeeping.


def slurm_job_id() -> str | None:
    """The Slurm job this process runs in (None outside Slurm)."""
    return os.environ.get("SLURM_JOB_ID") or None


def write_status(directory: Path, state: str, **details: Any) -> None:
    """Record ``state`` of the job in ``directory`` with who runs it (pid, host, Slurm job)."""
    job = slurm_job_id()
    io.write_json(
        Path(directory) / STATUS_FILE,
        {
            "state": state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"slurm_job_id": job} if job else {}),
            **details,
        },
    )


def queued_slurm_jobs() -> set[str] | None:
    """Ids of the jobs in the Slurm queue (pending or running), or None without a queue to ask."""
    if shutil.which("squeue") is None:
        return None
    states = ",".join(QUEUED_STATES)
    try:
        listed = subprocess.run(
            ["squeue", "--noheader", "--format=%A", f"--states={states}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return {line.strip() for line in listed.stdout.splitlines() if line.strip()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(
    directory: Path,
    done_file: str = DONE_FILE,
    queue: set[str] | Callable[[], set[str] | None] | None = None,
) -> str:
    """``done``, ``failed``, ``running`` or ``pending`` (see the module docstring).

    ``queue``: the ids of :func:`queued_slurm_jobs` (or a function that returns them), asked only
    when the job ran under Slurm; by default the queue is asked then.
    """
    directory = Path(directory)
    if (directory / done_file).is_file():
        return "done"
    if (directory / FAILED_FILE).is_file():
        return "failed"
    status_path = directory / STATUS_FILE
    if not status_path.is_file():
        return "pending"
    status = io.read_json(status_path, "job status")
    if status.get("state") != "running":
        return "pending"
    job = status.get("slurm_job_id")
    if job:
        queued = queue if isinstance(queue, set) else (queue or queued_slurm_jobs)()
        if queued is not None:
            return "running" if str(job) in queued else "pending"
    if status.get("host") != socket.gethostname():
        return "running"
    return "running" if _pid_alive(int(status["pid"])) else "pending"


def job_states(
    named_directories: Sequence[tuple[str, Path]], done_file: str = DONE_FILE
) -> dict[str, list[str]]:
    """Job names by state (every state present, possibly empty); the queue is asked at most
    once."""
    queue = functools.cache(queued_slurm_jobs)
    states: dict[str, list[str]] = {state: [] for state in STATES}
    for name, directory in named_directories:
        states[job_state(directory, done_file, queue)].append(name)
    return states


def status_line(states: dict[str, list[str]]) -> str:
    """``"3 done, 1 running, 0 failed, 4 pending (of 8)"``."""
    total = sum(len(names) for names in states.values())
    counts = ", ".join(f"{len(states[state])} {state}" for state in STATES)
    return f"{counts} (of {total})"


def failure(directory: Path) -> str | None:
    """The error a failed job recorded, or None."""
    path = Path(directory) / FAILED_FILE
    if not path.is_file():
        return None
    return str(io.read_json(path, "job failure").get("error", "no error recorded"))


# ---------------------------------------------------------------------------------------------
# Jobs that run commands.


@dataclass
class CommandJob:
    """A job that runs ``python -m`` commands in turn (each: the module, then its arguments) from
    ``cwd``; its bookkeeping lives in ``directory``."""

    name: str
    directory: str
    commands: list[list[str]]
    cwd: str


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_command_jobs(jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Run jobs (:class:`CommandJob` as dicts) one after another (a submitted job's work):
    finished ones are skipped; a failed one records its error and the next one runs."""
    outcome = {}
    for data in jobs:
        job = CommandJob(**data)
        directory = Path(job.directory)
        if job_state(directory, queue=set()) == "done":
            outcome[job.name] = "skipped (done)"
            continue
        directory.mkdir(parents=True, exist_ok=True)
        (directory / FAILED_FILE).unlink(missing_ok=True)
        write_status(directory, "running")
        log_path = directory / LOG_FILE
        error = None
        with log_path.open("a", encoding="utf-8") as log:
            for command in job.commands:
                log.write(f"$ python -m {' '.join(command)}\n")
                log.flush()
                exit_code = subprocess.call(
                    [sys.executable, "-m", *command], cwd=job.cwd, stdout=log, stderr=log
                )
                if exit_code != 0:
                    error = f"{command[0]} exited with code {exit_code}"
                    break
        if error is not None:
            error = f"{error}: {_last_line(log_path)} (whole output: {log_path})"
            io.write_json(
                directory / FAILED_FILE, {"error": error, "time": time.strftime("%H:%M:%S")}
            )
            write_status(directory, "failed")
            logger.error("%s failed: %s", job.name, error)
            outcome[job.name] = f"failed: {error}"
            continue
        io.write_json(directory / DONE_FILE, {"time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        write_status(directory, "done")
        outcome[job.name] = "done"
    return outcome


def run_jobs(
    jobs: Sequence[CommandJob],
    executor_kind: str,
    folder: Path,
    slurm: SlurmSettings | None = None,
    needs: str = "toy",
    parallel: int = 1,
    poll_seconds: float = 5.0,
) -> dict[str, list[str]]:
    """Run every unfinished job of ``jobs`` (see :func:`submit_and_wait`); their states after.

    Raises:
        JobsFailedError: some jobs failed (each named with its error); the others are done.
    """
    named = [(job.name, Path(job.directory)) for job in jobs]
    states = job_states(named)
    logger.info("%d jobs: %s", len(jobs), status_line(states))
    todo = [job for job in jobs if job.name in states["pending"] or job.name in states["failed"]]
    if todo:
        submit_and_wait(
            run_command_jobs,
            [dataclasses.asdict(job) for job in todo],
            [job.name for job in todo],
            executor_kind,
            folder,
            slurm or SlurmSettings(),
            needs,
            parallel,
            lambda: status_line(job_states(named)),
            poll_seconds,
        )
        states = job_states(named)
    logger.info("jobs finished: %s", status_line(states))
    failed = {name: failure(directory) for name, directory in named if name in states["failed"]}
    if failed:
        raise JobsFailedError(failed)
    return states


class JobsFailedError(errors.RemediError):
    """Jobs failed; each is named with its error. Running the experiment again reruns them."""

    def __init__(self, failed: dict[str, str | None]) -> None:
        self.failed = failed
        listing = "\n".join(f"  {name}: {error}" for name, error in failed.items())
        super().__init__(
            f"{len(failed)} job(s) failed:\n{listing}\nfix the cause and run the same command "
            "again: finished jobs are kept, failed ones run again"
        )


# ---------------------------------------------------------------------------------------------
# Executors.


class SubmissionError(errors.RemediError):
    """The cluster refused a job: the message names the resource and how to ask for less."""


# sbatch's refusals (lowercased substrings) and what to change.
_REFUSALS = (
    (
        "invalid generic resource",
        "the jobs asked {gpus} GPU(s) per node, which this cluster (or partition) does not have; "
        "ask none with gpus=0 (`--slurm gpus=0`, or `slurm: {{gpus_per_node: 0}}` in a sweep "
        "file), or name a partition with GPUs (partition=NAME)",
    ),
    (
        "invalid partition",
        "the partition {partition!r} does not exist here; name one that `sinfo` lists "
        "(partition=NAME), or leave it out for the cluster's default",
    ),
    (
        "time limit",
        "the time limit of {time} minutes is over the partition's; ask less (time=MINUTES)",
    ),
    (
        "memory specification",
        "{mem} GB per job is more than a node has; ask less (mem=GB)",
    ),
    (
        "requested node configuration is not available",
        "no node has {cpus} CPUs, {mem} GB and {gpus} GPU(s) at once (see `sinfo -o '%n %c %m "
        "%G'`); ask less (cpus=N, mem=GB, gpus=N)",
    ),
)


# Reasons a job waits that no waiting cures: it asks more than the partition's nodes or limits.
HOPELESS_REASONS = {
    "PartitionConfig": "requested node configuration is not available",
    "BadConstraints": "requested node configuration is not available",
    "PartitionNodeLimit": "requested node configuration is not available",
    "PartitionTimeLimit": "time limit",
}


def explain_refusal(message: str, slurm: SlurmSettings) -> str:
    """A :class:`SubmissionError` message for sbatch's ``message`` about jobs that asked
    ``slurm`` (resolved): the resource and the fix."""
    lines = [line.strip() for line in message.splitlines() if "sbatch: error" in line]
    said = "; ".join(dict.fromkeys(lines)) if lines else message.strip().splitlines()[-1]
    values = {
        "gpus": slurm.gpus_per_node,
        "partition": slurm.partition,
        "time": slurm.timeout_min,
        "mem": slurm.mem_gb,
        "cpus": slurm.cpus_per_task,
    }
    for needle, advice in _REFUSALS:
        if needle in message.lower():
            return f"Slurm refused the jobs ({said}): {advice.format(**values)}"
    return (
        f"Slurm refused the jobs ({said}); they asked partition={slurm.partition or 'default'}, "
        f"time={slurm.timeout_min}, cpus={slurm.cpus_per_task}, mem={slurm.mem_gb}, "
        f"gpus={slurm.gpus_per_node}: "
        "change what the message names (--slurm key=value, or the sweep file's slurm: fields)"
    )


def _queue_watcher() -> Any:
    """A watcher of submitted Slurm jobs that asks ``squeue`` where ``sacct`` fails (submitit's
    own asks ``sacct`` alone and warns on every poll without accounting)."""
    from submitit.slurm import slurm as submitit_slurm

    class QueueWatcher(submitit_slurm.SlurmInfoWatcher):
        """Job states from ``sacct`` where the cluster keeps accounting, else from ``squeue``
        (a job that has left the queue is finished), without a warning on each poll."""

        use_sacct: bool | None = None

        def _make_command(self) -> list[str] | None:
            command: list[str] | None = super()._make_command()
            if command is None:
                return None
            if self.use_sacct is None:
                probe = subprocess.run(["sacct", "--noheader", "-j", "1"], capture_output=True)
                self.use_sacct = probe.returncode == 0
                if not self.use_sacct:
                    logger.info("no Slurm accounting (sacct fails): polling the queue (squeue)")
            if self.use_sacct:
                return command
            jobs = sorted({job.split("_")[0] for job in self._registered - self._finished})
            return [
                "squeue",
                "--noheader",
                "--states=all",
                "--format=%i|%T|%N",
                "-j",
                ",".join(jobs),
            ]

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            listed = subprocess.run(command, capture_output=True, text=True)
            gone = "invalid job id" in listed.stderr.lower()  # every job has left the queue
            if listed.returncode == 0 or (not self.use_sacct and gone):
                self._info_dict.update(
                    self.read_info(listed.stdout if listed.returncode == 0 else "")
                )
            else:
                logger.debug("%s failed: %s", command[0], listed.stderr.strip())
            self._last_status_check = time.time()

        def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
            if self.use_sacct:
                return dict(super().read_info(string))
            text = string.decode() if isinstance(string, bytes) else string
            info: dict[str, dict[str, str]] = dict(
                super().read_info("JobID|State|NodeList\n" + text)
            )
            for job in self._registered - self._finished:
                if job not in info:
                    info[job] = {"JobID": job, "State": "LEFT_QUEUE", "NodeList": ""}
            return info

    return QueueWatcher(delay_s=30)


def _hopeless_reason(array_ids: set[str]) -> str | None:
    """The first reason in :data:`HOPELESS_REASONS` that a job of ``array_ids`` pends for."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%T|%r", "-j", ",".join(sorted(array_ids))],
        capture_output=True,
        text=True,
    )
    for line in listed.stdout.splitlines():
        state, _, reason = line.strip().partition("|")
        if state == "PENDING" and reason in HOPELESS_REASONS:
            return reason
    return None


def make_executor(kind: str, folder: Path, slurm: SlurmSettings, parallel: int) -> Any:
    """A submitit executor: ``local`` (this machine), or ``slurm`` with the resources of
    ``slurm`` (resolved: every resource set)."""
    if kind not in EXECUTORS:
        raise errors.UsageError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    if kind == "local":
        import submitit

        executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
        executor.update_parameters(timeout_min=24 * 60)
        return executor
    if shutil.which("sbatch") is None:
        raise errors.UsageError(f"--executor slurm needs {INSTALL_SLURM}; sbatch is not on PATH")
    from submitit.slurm.slurm import SlurmExecutor

    slurm_executor = SlurmExecutor(folder=str(folder))
    gpus = slurm.gpus_per_node
    slurm_executor.update_parameters(
        time=slurm.timeout_min,
        cpus_per_task=slurm.cpus_per_task,
        mem=f"{slurm.mem_gb}GB",
        array_parallelism=parallel,
        **({"gpus_per_node": gpus} if gpus else {}),
        **({"partition": slurm.partition} if slurm.partition else {}),
    )
    return slurm_executor


def submit_and_wait(
    work: Callable[[list[Any]], Any],
    payloads: list[Any],
    names: list[str],
    executor_kind: str,
    folder: Path,
    slurm: SlurmSettings,
    needs: str,
    parallel: int,
    progress: Callable[[], str],
    poll_seconds: float = 5.0,
) -> None:
    """Run ``work`` on the payloads (one job each, named ``names``) and wait, logging progress;
    ``needs`` (:data:`NEEDS`) fills the resources ``slurm`` leaves open.

    Local: the payloads are dealt round-robin to ``parallel`` processes, each running its share in
    turn. Slurm: one array task per payload, ``parallel`` at once. On Ctrl-C the jobs are
    cancelled (finished work stays finished) and the interruption propagates. A job that dies
    (rather than recording a failure) is logged with its name and log files.
    """
    from submitit.core.utils import FailedJobError

    slurm = slurm.resolved(needs)
    executor = make_executor(executor_kind, folder, slurm, parallel)
    if executor_kind == "local":
        shares = [
            list(range(len(payloads)))[i::parallel] for i in range(min(parallel, len(payloads)))
        ]
        jobs = [executor.submit(work, [payloads[i] for i in share]) for share in shares]
        job_names = [", ".join(names[i] for i in share) for share in shares]
    else:
        try:
            with executor.batch():
                jobs = [executor.submit(work, [payload]) for payload in payloads]
        except FailedJobError as error:
            raise SubmissionError(explain_refusal(str(error), slurm)) from None
        # submitit makes every array task a plain SlurmJob: watch them through the queue.
        watcher = _queue_watcher()
        for job in jobs:
            job.watcher = watcher
            watcher.register_job(job.job_id)
        job_names = list(names)
    logger.info("submitted %d %s jobs for %d pieces of work", len(jobs), executor_kind, len(names))
    array_ids = (
        {str(job.job_id).split("_")[0] for job in jobs} if executor_kind == "slurm" else set()
    )
    last = ""
    try:
        while not all(job.done() for job in jobs):
            reason = _hopeless_reason(array_ids) if array_ids else None
            if reason is not None:
                for job in jobs:
                    job.cancel(check=False)
                refusal = f"sbatch: error: the jobs pend for {reason}: {HOPELESS_REASONS[reason]}"
                raise SubmissionError(explain_refusal(refusal, slurm))
            line = progress()
            if line != last:
                logger.info("progress: %s", line)
                last = line
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        logger.warning("interrupted: %s", progress())
        raise
    for job, name in zip(jobs, job_names, strict=True):
        try:
            job.result()
        except Exception as error:  # a job that died (not work that recorded its failure)
            logger.error(
                "job %s (%s) died: %s; its logs: %s", job.job_id, name, error, job.paths.stderr
            )
