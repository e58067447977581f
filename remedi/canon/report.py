"""From a sweep's validation experiments to the test table, as the seed reports results.

For each degradation bound ("league"; the seed's are :data:`SEED_BOUNDS`), task and method:

1. **Choose on val.** Every validation experiment offers its last epoch within the bound
   (general loss at most ``(1 + bound)`` times the unedited model's, :meth:`ExperimentResult.
   selected`); the experiment whose such epoch improves success the most over its own unedited
   model wins (the seed's ``plotting/report_val_pythia.py:56-69,90``; ties: least general
   degradation, where the seed keeps its file order). Its epoch is the *stopping epoch*.
2. **Test over runs.** The winner's config is run on the test pair ``runs`` times (seeds
   ``0 .. runs-1``; the seed's ``configs/test/make_test.py:27`` writes 10 copies), each under
   ``<dir>/test/<name>/seed<k>`` and reused when finished, whatever the bound.
3. **Stop where val stopped.** In each test run, the last epoch within the bound among epochs
   ``0 .. stopping epoch`` (the seed's ``plotting/report_test_pythia.py:37-49``) gives its
   numbers; the table shows their mean over the runs and, for success, the standard error of
   the improvement over the runs (population standard deviation over ``sqrt(runs)``, as the
   seed's ``report_test_pythia.py:73``; ``ddof=1`` gives the sample one).

The table gives the success rate before and after and the degradation (increase in loss) on
general text, on the targeted (unconditional) texts and, apart, on the hard negatives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io
from remedi.canon.config import ExperimentConfig, with_overrides
from remedi.canon.experiment import (
    RESULT_FILE,
    SEED_BOUNDS,
    EpochStats,
    ExperimentResult,
    read_result,
    result_config,
    run_experiment,
)
from remedi.report import tables

logger = logging.getLogger(__name__)

TEST_DIR = "test"
DEFAULT_RUNS = 10
"""Test runs per chosen config: the seed's ten (``configs/test/make_test.py:27``)."""

COLUMNS = {
    "initial_success": "success before",
    "success": "success",
    # Plain-text headers: LaTeX without unicode packages must read them.
    "general": "general loss +",
    "targeted": "targeted loss +",
    "hard_negative": "hard neg. loss +",
}


@dataclass
class ReportRow(DataClassJsonMixin):
    """One bound, task and method: the config chosen on val and its test numbers, averaged over
    ``runs`` test runs (``success_stderr``: the standard error of the improvement)."""

    bound: float
    task: str
    method: str
    val_experiment: str
    val_epoch: int
    val_improvement: float
    runs: int
    test_epochs: list[int]
    initial_success: float
    success: float
    success_stderr: float
    general: float
    targeted: float
    hard_negative: float


def collect_val_results(directory: Path) -> list[ExperimentResult]:
    """Every finished validation experiment under ``directory`` (the test runs left out)."""
    directory = Path(directory)
    results = []
    for path in sorted(directory.rglob(RESULT_FILE)):
        if TEST_DIR in path.relative_to(directory).parts[:1]:
            continue
        result = read_result(path.parent)
        if result is not None and result.split == "val":
            results.append(result)
    return results


def improvement(result: ExperimentResult, stats: EpochStats) -> float:
    """Success at ``stats`` minus the unedited model's in the same run."""
    return stats.success - result.initial.success


def best_by_validation(
    results: list[ExperimentResult], bound: float
) -> dict[tuple[str, str], ExperimentResult]:
    """Per (task, method): the experiment whose last epoch within the bound improves success the
    most (the seed's ``report_val_pythia.py:90``); ties: the least general degradation."""
    best: dict[tuple[str, str], ExperimentResult] = {}

    def key(result: ExperimentResult) -> tuple[float, float]:
        chosen = result.selected(bound)
        return improvement(result, chosen), -result.degradation(chosen)["general"]

    for result in results:
        group = (result.task, result.method)
        if group not in best or key(result) > key(best[group]):
            best[group] = result
    return best


def stopped_epoch(result: ExperimentResult, bound: float, stop: int) -> EpochStats:
    """The last epoch within the bound among epochs ``0 .. stop`` (the seed's
    ``report_test_pythia.py:39-48``: the test run stops at the epoch chosen on val)."""
    limit = result.initial.general_loss * (1 + bound)
    inside = [s for s in result.epochs if s.epoch <= stop and s.general_loss <= limit]
    return inside[-1] if inside else result.initial


def mean_and_stderr(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard error (standard deviation with ``ddof`` over ``sqrt(n)``; ``ddof=0``
    as the seed's ``np.std``); the error of one value is 0."""
    n = len(values)
    if n == 0:
        raise errors.UsageError("no runs to average; run the test experiments first")
    mean = sum(values) / n
    if n - ddof <= 0:
        return mean, 0.0
    variance = sum((value - mean) ** 2 for value in values) / (n - ddof)
    return mean, math.sqrt(variance) / math.sqrt(n)


def test_row(
    chosen: ExperimentResult, tests: Sequence[ExperimentResult], bound: float, ddof: int = 0
) -> ReportRow:
    """The row of a config chosen on val from its test runs (each stopped at the val epoch)."""
    stop = chosen.selected(bound)
    epochs = [stopped_epoch(test, bound, stop.epoch) for test in tests]
    degradations = [test.degradation(e) for test, e in zip(tests, epochs, strict=True)]
    gains = [improvement(test, e) for test, e in zip(tests, epochs, strict=True)]
    _, stderr = mean_and_stderr(gains, ddof)

    def mean(values: Sequence[float]) -> float:
        return mean_and_stderr(values)[0]

    return ReportRow(
        bound=bound,
        task=chosen.task,
        method=chosen.method,
        val_experiment=chosen.name,
        val_epoch=stop.epoch,
        val_improvement=improvement(chosen, stop),
        runs=len(tests),
        test_epochs=[e.epoch for e in epochs],
        initial_success=mean([test.initial.success for test in tests]),
        success=mean([e.success for e in epochs]),
        success_stderr=stderr,
        general=mean([d["general"] for d in degradations]),
        targeted=mean([d["targeted"] for d in degradations]),
        hard_negative=mean([d["hard_negative"] for d in degradations]),
    )


def test_configs(
    result: ExperimentResult, directory: Path, runs: int = DEFAULT_RUNS
) -> list[ExperimentConfig]:
    """The winning validation config moved to the test pair, once per seed ``0 .. runs-1``,
    placed under ``<dir>/test/<name>/seed<k>``."""
    if runs < 1:
        raise errors.UsageError(f"runs must be at least 1, got {runs}")
    base = result_config(result)
    return [
        with_overrides(
            base,
            {
                "split": "test",
                "seed": seed,
                "name": f"{result.name}-test-seed{seed}",
                "output_dir": str(Path(directory) / TEST_DIR / result.name / f"seed{seed}"),
            },
            f"test config of {result.name}",
        )
        for seed in range(runs)
    ]


def build_report(
    directory: Path,
    bounds: Sequence[float] = SEED_BOUNDS,
    runs: int = DEFAULT_RUNS,
    ddof: int = 0,
) -> list[ReportRow]:
    """Choose on val per bound, run (or reuse) each chosen config's test runs, collect the rows."""
    results = collect_val_results(directory)
    if not results:
        raise errors.MissingFileError(
            f"no finished validation experiments under {directory}; run the sweep first"
        )
    rows = []
    for bound in bounds:
        for _, chosen in sorted(best_by_validation(results, bound).items()):
            tests = [run_experiment(config) for config in test_configs(chosen, directory, runs)]
            rows.append(test_row(chosen, tests, bound, ddof))
    return rows


def report_table(rows: list[ReportRow], bound: float) -> tables.Table:
    """The test table of one bound: one row per task and method."""
    rows = [row for row in rows if row.bound == bound]
    runs = sorted({row.runs for row in rows})
    return tables.Table(
        title=(
            f"Canonical examples, test (chosen on val, general degradation bound {bound:g}, "
            f"mean of {'/'.join(map(str, runs))} runs)"
        ),
        columns=dict(COLUMNS),
        rows=[
            tables.TableRow(
                f"{row.task} / {row.method}",
                {key: getattr(row, key) for key in COLUMNS},
                spreads={"success": row.success_stderr},
            )
            for row in rows
        ],
        notes=[
            "success: fraction of evaluation examples whose score clears the task's threshold, "
            "mean over test runs stopped at the epoch chosen on val, ± the standard error of its "
            "improvement over the unedited model across the runs; loss +: increase in loss over the unedited model (NLL "
            "per token for general and targeted text, per example for hard negatives)",
            *(
                f"{row.task} / {row.method}: {row.val_experiment} (val improvement "
                f"{row.val_improvement:+.3f} at epoch {row.val_epoch}), test epochs "
                f"{row.test_epochs}"
                for row in rows
            ),
        ],
        digits=3,
    )


def write_report(
    directory: Path,
    bounds: Sequence[float] = SEED_BOUNDS,
    runs: int = DEFAULT_RUNS,
    ddof: int = 0,
) -> tuple[list[ReportRow], list[tables.TableFiles]]:
    """Write ``report-bound<bound>.{md,tex,json,png}`` per bound and ``report_rows.json``."""
    rows = build_report(directory, bounds, runs, ddof)
    files = [
        tables.write_table(report_table(rows, bound), Path(directory), f"report-bound{bound:g}")
        for bound in bounds
    ]
    io.write_json(Path(directory) / "report_rows.json", [row.to_dict() for row in rows])
    return rows, files
