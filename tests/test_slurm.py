"""Long experiments through a real Slurm: a one-node cluster started by the tests.

The cluster tests need Slurm and munge (``apt-get install slurm-wlm munge``, as root); without
them they are skipped with that message, or failed where ``REMEDI_REQUIRE_SLURM=1`` (set by
``.ci/run`` once it has installed them). The first tests need no cluster.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from remedi import errors, jobs
from remedi.canon import sweep
from tests.slurm_fixtures import REQUIRE_SLURM, LocalCluster, missing_requirements, start_cluster
from tests.test_canonical import _tiny_config, _write_yaml, tiny_model_dir  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY = jobs.SlurmSettings(mem_gb=1, timeout_min=10)


# ---------------------------------------------------------------------------------------------
# Without a cluster: resources, refusals, bookkeeping.


def test_slurm_flags_set_each_resource_and_a_bad_one_says_the_form():
    settings = jobs.parse_slurm_spec("partition=gpu, time=90,cpus=2,mem=8,gpus=0")
    assert settings == jobs.SlurmSettings("gpu", 90, 0, 2, 8)
    assert jobs.parse_slurm_spec("", settings) == settings
    with pytest.raises(errors.UsageError, match=r"key=value pairs.*partition=, time="):
        jobs.parse_slurm_spec("gpu=1")
    with pytest.raises(errors.UsageError, match="whole number"):
        jobs.parse_slurm_spec("mem=lots")


def test_a_gpu_is_asked_only_where_the_model_needs_one_and_a_toy_asks_little():
    assert jobs.work_needs("gpt2-xl", None) == "gpu"
    assert jobs.work_needs("gpt2-xl", "cpu") == "cpu"
    assert jobs.work_needs("toy", None) == "toy"
    assert jobs.most_needs(["toy", "gpu", "cpu"]) == "gpu"
    toy = jobs.SlurmSettings().resolved("toy")
    assert (toy.gpus_per_node, toy.cpus_per_task, toy.mem_gb) == (0, 1, 4)
    real = jobs.SlurmSettings(mem_gb=64).resolved("gpu")
    assert (real.gpus_per_node, real.cpus_per_task, real.mem_gb) == (1, 4, 64)
    assert jobs.SlurmSettings(gpus_per_node=0).resolved("gpu").gpus_per_node == 0


def test_each_refusal_names_the_resource_and_the_fix():
    settings = jobs.SlurmSettings("gpu", 600, gpus_per_node=1, cpus_per_task=64, mem_gb=900)
    said = {
        "sbatch: error: Invalid generic resource (gres) specification": "gpus=0",
        "sbatch: error: invalid partition specified: gpu": "partition 'gpu'",
        "sbatch: error: Requested time limit is invalid (missing or exceeds some limit)": (
            "600 minutes"
        ),
        "sbatch: error: Memory specification can not be satisfied": "900 GB",
        "sbatch: error: Requested node configuration is not available": "64 CPUs",
        "sbatch: error: something new": "change what the message names",
    }
    for message, fix in said.items():
        assert fix in jobs.explain_refusal(message, settings), message


def test_a_job_whose_slurm_job_left_the_queue_is_pending(tmp_path: Path):
    """On a cluster the host differs from the submitting one: the queue, not the pid, says
    whether the job still runs."""
    status = {"state": "running", "pid": 1, "host": "another-node", "slurm_job_id": "123"}
    (tmp_path / jobs.STATUS_FILE).write_text(json.dumps(status))
    assert jobs.job_state(tmp_path, queue={"123"}) == "running"
    assert jobs.job_state(tmp_path, queue=set()) == "pending"


def test_without_slurm_the_slurm_executor_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.UsageError, match="apt-get install slurm-wlm munge"):
        jobs.make_executor("slurm", tmp_path, TOY.resolved("toy"), parallel=1)


# ---------------------------------------------------------------------------------------------
# On a one-node cluster.


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A one-node cluster for this module's tests; its daemons stop at the end, also on failure."""
    why = missing_requirements()
    if why is not None:
        if os.environ.get(REQUIRE_SLURM, "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{why} ({REQUIRE_SLURM}=1 makes the Slurm tests mandatory)")
        pytest.skip(why)
    with pytest.MonkeyPatch.context() as patch:
        started = time.monotonic()
        local = start_cluster(tmp_path_factory.mktemp("slurm"))
        logging.getLogger(__name__).info("cluster up in %.1f s", time.monotonic() - started)
        try:
            patch.setenv("SLURM_CONF", str(local.config))
            yield local
        finally:
            local.stop()


def _copy_job(name: str, root: Path, source: Path) -> jobs.CommandJob:
    """A toy job: pretty-print ``source`` into ``<root>/<name>/out.json``."""
    out = root / name / "out.json"
    return jobs.CommandJob(name, str(root / name), [["json.tool", str(source), str(out)]], ".")


def _no_sacct_warnings(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if "sacct" in r.getMessage() and r.levelno >= 30]


@pytest.mark.slow
def test_jobs_run_as_an_array_and_a_failure_is_reported_by_name(
    cluster: LocalCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    source = tmp_path / "in.json"
    source.write_text('{"layer": 3, "score": 0.5}')
    root = tmp_path / "jobs"
    todo = [_copy_job("a", root, source), _copy_job("b", root, source)]
    todo.append(_copy_job("broken", root, tmp_path / "missing.json"))
    caplog.set_level(logging.INFO, logger="remedi")
    with pytest.raises(jobs.JobsFailedError) as failed:
        jobs.run_jobs(todo, "slurm", root / "submitit", TOY, parallel=3, poll_seconds=0.5)
    assert list(failed.value.failed) == ["broken"]
    assert "broken: json.tool exited with code 2" in str(failed.value)
    assert "missing.json" in str(failed.value)  # the command's own last line
    for name in ("a", "b"):
        assert json.loads((root / name / "out.json").read_text()) == {"layer": 3, "score": 0.5}
        assert jobs.job_state(root / name) == "done"
    # They ran under Slurm, as one array.
    array_ids = {
        json.loads((root / name / jobs.STATUS_FILE).read_text())["slurm_job_id"] for name in "ab"
    }
    assert len(array_ids) == 2
    assert "polling the queue (squeue)" in caplog.text  # this cluster keeps no accounting
    _no_sacct_warnings(caplog)
    # Fixed, the failed job runs again; the finished ones do not.
    (tmp_path / "missing.json").write_text("[1]")
    before = (root / "a" / jobs.DONE_FILE).stat().st_mtime_ns
    states = jobs.run_jobs(todo, "slurm", root / "submitit", TOY, poll_seconds=0.5)
    assert states["done"] == ["a", "b", "broken"]
    assert (root / "a" / jobs.DONE_FILE).stat().st_mtime_ns == before


@pytest.mark.slow
def test_an_interrupted_run_is_cancelled_and_resumes_what_is_left(
    cluster: LocalCluster, tmp_path: Path
):
    source = tmp_path / "in.json"
    source.write_text("[1, 2]")
    root = tmp_path / "jobs"
    todo = [_copy_job(name, root, source) for name in ("a", "b")]
    slow = jobs.CommandJob(
        "slow", str(root / "slow"), [["timeit", "-n1", "-r1", "import time; time.sleep(2)"]], "."
    )
    todo.append(slow)
    # Before: "a" finished; "b" was running in a Slurm job that has left the queue.
    jobs.run_command_jobs([todo[0].__dict__])
    done_before = (root / "a" / jobs.DONE_FILE).stat().st_mtime_ns
    (root / "b").mkdir(parents=True)
    stale = {"state": "running", "pid": 1, "host": "node-gone", "slurm_job_id": "987654"}
    (root / "b" / jobs.STATUS_FILE).write_text(json.dumps(stale))
    named = [(job.name, Path(job.directory)) for job in todo]
    assert jobs.job_states(named)["pending"] == ["b", "slow"]

    def interrupt() -> str:  # Ctrl-C while the jobs wait or run
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jobs.submit_and_wait(
            jobs.run_command_jobs,
            [job.__dict__ for job in todo[1:]],
            ["b", "slow"],
            "slurm",
            root / "submitit",
            TOY,
            "toy",
            1,
            interrupt,
        )
    deadline = time.monotonic() + 30
    while cluster.run("squeue", "--noheader").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cluster.run("squeue", "--noheader").stdout.strip()  # cancelled
    assert "done" not in jobs.job_states(named)["done"][1:]
    # Resumed: what is left runs, "a" is not rerun.
    states = jobs.run_jobs(todo, "slurm", root / "submitit", TOY, parallel=2, poll_seconds=0.5)
    assert states["done"] == ["a", "b", "slow"]
    assert (root / "a" / jobs.DONE_FILE).stat().st_mtime_ns == done_before


@pytest.mark.slow
def test_a_refused_submission_names_the_resource_and_the_fix(cluster: LocalCluster, tmp_path):
    todo = [jobs.CommandJob("a", str(tmp_path / "a"), [["platform"]], ".")]
    # The default for a real model asks one GPU; this node has none.
    with pytest.raises(jobs.SubmissionError, match=r"asked 1 GPU.*gpus=0"):
        jobs.run_jobs(todo, "slurm", tmp_path / "submitit", jobs.SlurmSettings(), "gpu")
    # More CPUs than the node has: accepted by sbatch, then pending for ever; cancelled.
    greedy = jobs.SlurmSettings(cpus_per_task=64, mem_gb=1)
    with pytest.raises(jobs.SubmissionError, match=r"pend for PartitionConfig.*64 CPUs"):
        jobs.run_jobs(todo, "slurm", tmp_path / "submitit", greedy, poll_seconds=0.5)
    # Cancelled (the jobs of earlier tests may still be leaving the queue).
    assert not cluster.run("squeue", "--noheader", "--states=PENDING").stdout.strip()
    assert jobs.job_state(tmp_path / "a") == "pending"


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_canonical_sweep_on_slurm_matches_the_local_run(
    cluster: LocalCluster,
    tiny_model_dir: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    """The issue's case: the default resources of a CPU run ask no GPU, so the sweep runs."""
    base = _tiny_config(tiny_model_dir, tmp_path / "unused", "verb_conjugation").to_dict()
    base.pop("output_dir")
    base.pop("name")
    _write_yaml(tmp_path / "tiny.yaml", base)
    results = {}
    for executor, seeds in (("slurm", [0, 1]), ("local", [0])):  # two as a Slurm array
        sweep_file = _write_yaml(
            tmp_path / f"sweep_{executor}.yaml",
            {
                "output_dir": str(tmp_path / executor),
                "parallel": 2,
                "slurm": {"cpus_per_task": 1, "mem_gb": 2},  # a CPU run asks no GPU by itself
                "experiments": [{"config": "tiny.yaml", "grid": {"seed": seeds}}],
            },
        )
        states = sweep.run_sweep(sweep_file, executor, poll_seconds=0.5)
        assert states["done"] == [f"tiny-seed{seed}" for seed in seeds], executor
        results[executor] = json.loads(
            (tmp_path / executor / "tiny-seed0" / "result.json").read_text()
        )["epochs"]
    assert results["slurm"] == results["local"]
    _no_sacct_warnings(caplog)


# ---------------------------------------------------------------------------------------------
# The invoke tasks: one job per method x mode (or per layer), here in turn or as jobs.


def test_harm_runs_each_method_and_mode_pair(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from invoke.context import Context

    import tasks

    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks, "_python", lambda c, module, args: ran.append((module, args)))
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    (tmp_path / "editors_counterfact_gpt2").mkdir()
    tasks.harm_run(
        Context(), model="gpt2", method="rome,ft", mode="instance-sequential,batch-single"
    )
    pairs = [(args[3], args[5]) for _, args in ran]
    assert pairs == [
        ("rome", "instance-sequential"),
        ("rome", "batch-single"),
        ("ft", "instance-sequential"),
        ("ft", "batch-single"),
    ]
    assert all(module == "scripts.harm_run" and "--editors" in args for module, args in ran)


@pytest.mark.slow
def test_a_task_runs_its_jobs_on_slurm_with_their_bookkeeping_under_results(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from invoke.context import Context

    import tasks

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    source = tmp_path / "in.json"
    source.write_text("[3]")
    work = [
        (f"layer_{layer}", [["json.tool", str(source), str(tmp_path / f"out{layer}.json")]])
        for layer in (0, 1)
    ]
    tasks._run_jobs(Context(), "toy_sweep", work, "slurm", "cpus=1,mem=1,time=5,gpus=0", "gpu")
    assert "toy_sweep: 2 done, 0 running, 0 failed, 0 pending (of 2)" in capsys.readouterr().out
    for layer in (0, 1):
        assert json.loads((tmp_path / f"out{layer}.json").read_text()) == [3]
        status = json.loads(
            (tmp_path / "toy_sweep/jobs" / f"layer_{layer}/status.json").read_text()
        )
        assert status["state"] == "done" and status["slurm_job_id"]
    # A bad --slurm value exits with the form it takes.
    from invoke.exceptions import Exit

    with pytest.raises(Exit, match="key=value"):
        tasks._run_jobs(Context(), "toy_sweep", work, "slurm", "cores=2", "toy")
