"""The efficacy / relation-specificity frontier of a weight swept over training runs.

Each point is one setting (e.g. ``lam_rel`` 1) evaluated in one or more runs (seeds): the REMEDI
row of each run's CounterFact summary (``summary.json``, written by ``scripts/eval_fact_gen.py``),
its Efficacy and Rel. spec. averaged over the runs with their standard deviation. The frontier is
written as a markdown table, its JSON, and a plot of relation specificity against efficacy with
the goal's corner marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io, metrics
from remedi.evaluation.editing import counterfact_report
from remedi.report import figures, tables

SUMMARY_FILE = "summary.json"


@dataclass
class FrontierPoint(DataClassJsonMixin):
    """One setting: its label, mean Efficacy and Rel. spec. over its runs, and their spread."""

    label: str
    runs: int
    cases: int
    efficacy: float | None
    relation_specificity: float | None
    efficacy_spread: float | None = None
    relation_specificity_spread: float | None = None


def _remedi_row(summary_file: Path) -> counterfact_report.SummaryRow:
    if not summary_file.is_file():
        raise errors.MissingFileError(
            f"no evaluation summary at {summary_file}: run scripts.eval_fact_gen with -b "
            "efficacy relation_specificity on the editors first"
        )
    summary = counterfact_report.Summary.from_dict(io.read_json(summary_file, "summary"))
    for row in summary.rows:
        if row.method == "remedi":
            return row
    raise errors.FileFormatError(
        f"{summary_file} has no REMEDI row (methods: {[row.method for row in summary.rows]}); "
        "evaluate with -e EDITORS_DIR"
    )


def frontier_point(label: str, evaluations: Sequence[Path]) -> FrontierPoint:
    """The point of one setting from its evaluations' directories (one per run)."""
    rows = [_remedi_row(Path(directory) / SUMMARY_FILE) for directory in evaluations]
    efficacy, efficacy_spread = metrics.mean_and_spread([r.values.get("efficacy") for r in rows])
    relation, relation_spread = metrics.mean_and_spread(
        [r.values.get("relation_specificity") for r in rows]
    )
    return FrontierPoint(
        label=label,
        runs=len(rows),
        cases=round(sum(row.cases for row in rows) / max(1, len(rows))),
        efficacy=efficacy,
        relation_specificity=relation,
        efficacy_spread=efficacy_spread,
        relation_specificity_spread=relation_spread,
    )


def frontier(settings: Mapping[str, Sequence[Path]]) -> list[FrontierPoint]:
    """One point per setting, in the mapping's order."""
    return [frontier_point(label, evaluations) for label, evaluations in settings.items()]


def markdown_table(points: Sequence[FrontierPoint], title: str = "") -> str:
    """The frontier as a markdown table (mean ± standard deviation over runs)."""
    headers = ("Setting", "Runs", "N", "Efficacy", "Rel. spec.")
    rows = [
        (
            point.label,
            str(point.runs),
            str(point.cases),
            tables.format_number(point.efficacy, 1, point.efficacy_spread),
            tables.format_number(point.relation_specificity, 1, point.relation_specificity_spread),
        )
        for point in points
    ]
    lines = [f"**{title}**", ""] if title else []
    return "\n".join([*lines, *tables.markdown_grid(headers, rows)]) + "\n"


def plot_frontier(
    points: Sequence[FrontierPoint],
    path: Path,
    title: str = "",
    goal: tuple[float, float] | None = None,
) -> Path:
    """Relation specificity against efficacy, one labelled point per setting (error bars: the
    spread over runs), joined in order; ``goal`` (efficacy, relation specificity) shades the
    corner a setting should reach."""
    plt = figures.pyplot()
    figure, axis = plt.subplots(figsize=(5.0, 4.0))
    drawn = [p for p in points if p.efficacy is not None and p.relation_specificity is not None]
    if goal is not None:
        axis.axvspan(goal[0], 100.5, ymin=goal[1] / 100.5, color="0.9", zorder=0)
        axis.annotate("goal", (goal[0] + 0.5, 99), fontsize=7, va="top")
    axis.plot(
        [p.efficacy for p in drawn],
        [p.relation_specificity for p in drawn],
        color="0.6",
        linewidth=0.8,
    )
    for index, point in enumerate(drawn):
        axis.errorbar(
            point.efficacy,
            point.relation_specificity,
            xerr=point.efficacy_spread,
            yerr=point.relation_specificity_spread,
            fmt="o",
            color=figures.color(index),
            label=point.label,
            capsize=2,
        )
    axis.set_xlabel("Efficacy (%)")
    axis.set_ylabel("Relation specificity (%)")
    axis.set_xlim(0, 100.5)
    axis.set_ylim(0, 100.5)
    axis.spines[["top", "right"]].set_visible(False)
    axis.legend(fontsize=7, loc="lower left")
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figures.save(figure, path)


def write_frontier(
    points: Sequence[FrontierPoint],
    directory: Path,
    title: str = "",
    goal: tuple[float, float] | None = None,
) -> tuple[Path, Path, Path]:
    """Write ``frontier.md``, ``frontier.json`` and ``frontier.png`` to ``directory``."""
    directory = Path(directory)
    markdown = directory / "frontier.md"
    io.write_text(markdown, markdown_table(points, title))
    data_file = directory / "frontier.json"
    io.write_json(data_file, [point.to_dict() for point in points])
    plot = plot_frontier(points, directory / "frontier.png", title, goal)
    return markdown, data_file, plot
