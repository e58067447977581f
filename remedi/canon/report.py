"""From a sweep's validation experiments to the test table, as the seed reports results.

For each task and method: every validation experiment contributes its last epoch within the
degradation bound (general loss at most ``(1 + bound)`` times the unedited model's); the
experiment whose such epoch has the highest success rate wins (ties: least general
degradation). Its config is then run on the test pair (``<dir>/test/<name>``; skipped when
finished), the same bound picks the test epoch, and the table gives the success rate before
and after and the degradation (increase in loss) on general text, on the targeted
(unconditional) texts and, apart, on the hard negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io
from remedi.canon.config import ExperimentConfig, with_overrides
from remedi.canon.experiment import (
    RESULT_FILE,
    ExperimentResult,
    read_result,
    result_config,
    run_experiment,
)
from remedi.report import tables

logger = logging.getLogger(__name__)

TEST_DIR = "test"
DEFAULT_BOUND = 1e-3
"""The seed's loosest league: at most 0.1% more loss on general text."""

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
    """One task and method: the chosen validation experiment and its test numbers."""

    task: str
    method: str
    val_experiment: str
    val_success: float
    test_experiment: str
    test_epoch: int
    initial_success: float
    success: float
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


def best_by_validation(
    results: list[ExperimentResult], bound: float
) -> dict[tuple[str, str], ExperimentResult]:
    """Per (task, method): the experiment with the best success within the bound."""
    best: dict[tuple[str, str], ExperimentResult] = {}

    def key(result: ExperimentResult) -> tuple[float, float]:
        chosen = result.selected(bound)
        return chosen.success, -result.degradation(chosen)["general"]

    for result in results:
        group = (result.task, result.method)
        if group not in best or key(result) > key(best[group]):
            best[group] = result
    return best


def test_config(result: ExperimentResult, directory: Path) -> ExperimentConfig:
    """The winning validation config moved to the test pair, placed under ``<dir>/test``."""
    return with_overrides(
        result_config(result),
        {
            "split": "test",
            "name": f"{result.name}-test",
            "output_dir": str(Path(directory) / TEST_DIR / result.name),
        },
        f"test config of {result.name}",
    )


def build_report(directory: Path, bound: float = DEFAULT_BOUND) -> list[ReportRow]:
    """Choose on validation, run (or reuse) the test experiments, and collect the rows."""
    results = collect_val_results(directory)
    if not results:
        raise errors.MissingFileError(
            f"no finished validation experiments under {directory}; run the sweep first"
        )
    rows = []
    for (task, method), chosen in sorted(best_by_validation(results, bound).items()):
        test = run_experiment(test_config(chosen, directory))
        epoch = test.selected(bound)
        degradation = test.degradation(epoch)
        rows.append(
            ReportRow(
                task=task,
                method=method,
                val_experiment=chosen.name,
                val_success=chosen.selected(bound).success,
                test_experiment=test.name,
                test_epoch=epoch.epoch,
                initial_success=test.initial.success,
                success=epoch.success,
                general=degradation["general"],
                targeted=degradation["targeted"],
                hard_negative=degradation["hard_negative"],
            )
        )
    return rows


def report_table(rows: list[ReportRow], bound: float) -> tables.Table:
    """The test table: one row per task and method."""
    return tables.Table(
        title=f"Canonical examples, test (chosen on val, general degradation bound {bound:g})",
        columns=dict(COLUMNS),
        rows=[
            tables.TableRow(
                f"{row.task} / {row.method}",
                {key: getattr(row, key) for key in COLUMNS},
            )
            for row in rows
        ],
        notes=[
            "success: fraction of evaluation examples whose score clears the task's threshold; "
            "loss +: increase in loss over the unedited model (NLL per token for general and "
            "targeted text, per example for hard negatives)",
            *(
                f"{row.task} / {row.method}: {row.val_experiment} (val success "
                f"{row.val_success:.3f}), test epoch {row.test_epoch}"
                for row in rows
            ),
        ],
        digits=3,
    )


def write_report(
    directory: Path, bound: float = DEFAULT_BOUND
) -> tuple[list[ReportRow], tables.TableFiles]:
    """Write ``report-bound<bound>.{md,tex,json,png}`` and ``report_rows-bound<bound>.json``."""
    rows = build_report(directory, bound)
    table = report_table(rows, bound)
    files = tables.write_table(table, Path(directory), f"report-bound{bound:g}")
    io.write_json(
        Path(directory) / f"report_rows-bound{bound:g}.json", [row.to_dict() for row in rows]
    )
    return rows, files
