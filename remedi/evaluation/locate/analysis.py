"""What the problems' results say: R^2 of edit success on the tracing effect and the edit layer.

- Regressions (``third_party/data-analysis.ipynb``, "R2 values for each method"): least
  squares of the rewrite score on the layer as a categorical variable, on the tracing effect,
  and on both with their interaction (``score ~ factor(layer) * max_fraction_restored``), for
  each (method, edit window, problem) apart, as the notebook's loop over its conditions (FT 1,
  FT 5, ROME 1, MEMIT 5) and objectives; :func:`regress`, :func:`by_method_and_window`.
  Pooling methods (what this project's first analysis also reported) is an explicit option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dataclasses_json import DataClassJsonMixin

from remedi import errors
from remedi.evaluation.locate.problems import PROBLEM_LABELS, PROBLEMS, ProblemResult
from remedi.report.tables import Table, TableRow


def r_squared(y: np.ndarray, features: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` on ``features`` (n, k) plus an intercept."""
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([np.ones(len(y)), np.asarray(features, dtype=np.float64)])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    total = ((y - y.mean()) ** 2).sum()
    if total == 0:
        return float("nan")
    return float(1.0 - (residual**2).sum() / total)


def layer_indicators(layers: Sequence[int]) -> np.ndarray:
    """One-hot columns of the edit layer as a categorical variable (the first level dropped)."""
    levels = sorted(set(layers))
    return np.array([[layer == level for level in levels[1:]] for layer in layers], dtype=float)


@dataclass
class Regressions(DataClassJsonMixin):
    """R^2 of one problem's success on the tracing effect, the edit layer, and both."""

    problem: str
    num_edits: int
    tracing: float
    layer: float
    both: float
    method: str = ""
    """The method and window regressed ("" and 0 when pooled over several)."""
    window: int = 0


def group_of(result: ProblemResult) -> tuple[str, int]:
    """The (method, edit window) a result's R^2 is computed within."""
    return result.method, result.window


def by_method_and_window(
    results: Sequence[ProblemResult],
) -> dict[tuple[str, int], list[ProblemResult]]:
    """The results of each (method, edit window), in the order first seen."""
    groups: dict[tuple[str, int], list[ProblemResult]] = {}
    for result in results:
        groups.setdefault(group_of(result), []).append(result)
    return groups


def regress(results: Sequence[ProblemResult], pooled: bool = False) -> Regressions:
    """Regress success on the tracing effect, on the layer (categorical), and on both with
    their interaction, for one problem and, unless ``pooled``, one (method, edit window)."""
    problems = {result.problem for result in results}
    if len(problems) != 1:
        raise errors.UsageError(f"regress one problem at a time, got {sorted(problems)}")
    groups = sorted(by_method_and_window(results))
    if len(groups) != 1 and not pooled:
        raise errors.UsageError(
            f"regress one (method, window) at a time, as the reference, got {groups}; "
            "split them with by_method_and_window, or pass pooled=True to pool them"
        )
    y = np.array([result.success for result in results])
    effect = np.array([[result.tracing_effect] for result in results])
    layers = layer_indicators([result.layer for result in results])
    # The reference's full model: score ~ factor(layer) * tracing, interactions included.
    both = np.column_stack([effect, layers, layers * effect])
    method, window = groups[0] if len(groups) == 1 else ("", 0)
    return Regressions(
        problem=problems.pop(),
        num_edits=len(results),
        tracing=r_squared(y, effect),
        layer=r_squared(y, layers),
        both=r_squared(y, both),
        method=method,
        window=window,
    )


def analyze(
    results: Sequence[ProblemResult], title: str = "", pooled: bool = False
) -> tuple[Table, Table]:
    """The R^2 table (problems x {tracing, layer, both}) and the mean success by layer, of one
    (method, edit window), or of several pooled with ``pooled``."""
    groups = sorted(by_method_and_window(results))
    if len(groups) > 1 and not pooled:
        raise errors.UsageError(
            f"the results hold several (method, window) groups {groups}; analyse each apart "
            "(by_method_and_window), as the reference, or pass pooled=True"
        )
    by_problem: dict[str, list[ProblemResult]] = {}
    for result in results:
        by_problem.setdefault(result.problem, []).append(result)
    ordered = [problem for problem in PROBLEMS if problem in by_problem]
    if not ordered:
        raise errors.UsageError("no editing problem results to analyse; run x.edit.problems")
    regressions = [regress(by_problem[problem], pooled) for problem in ordered]
    r2 = Table(
        title=f"R^2 of edit success{': ' + title if title else ''}",
        columns={"tracing": "Tracing effect", "layer": "Edit layer", "both": "Both"},
        rows=[
            TableRow(
                f"{PROBLEM_LABELS[reg.problem]} (n={reg.num_edits})",
                {"tracing": reg.tracing, "layer": reg.layer, "both": reg.both},
            )
            for reg in regressions
        ],
        notes=[
            "Least squares with an intercept; the layer enters as a categorical variable; "
            "'Both' includes the layer x tracing interaction. Tracing effect: the max fraction "
            "restored at the edit layer over the tokens from the subject on.",
            f"Protocol {'/'.join(sorted({result.protocol for result in results}))}; "
            + ("pooled over " if pooled and len(groups) > 1 else "")
            + ", ".join(f"{method} (window {window})" for method, window in groups)
            + ".",
        ],
        digits=3,
    )
    layers = sorted({result.layer for result in results})
    by_layer = Table(
        title=f"Mean edit success by layer{': ' + title if title else ''}",
        columns={str(layer): f"L{layer}" for layer in layers},
        rows=[
            TableRow(
                PROBLEM_LABELS[problem],
                {
                    str(layer): _mean([r.success for r in by_problem[problem] if r.layer == layer])
                    for layer in layers
                },
            )
            for problem in ordered
        ],
        notes=[
            "Rewrite score max(0, (p_post - p_pre) / (1 - p_pre)); erasure score "
            "max(0, (p_pre - p_post) / p_pre)."
        ],
        digits=3,
    )
    return r2, by_layer


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None
