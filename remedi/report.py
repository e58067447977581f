"""Summaries of an evaluation a person can paste: a markdown and a LaTeX table, and a bar plot.

One row per method (REMEDI, then the baselines), one column per headline number:

======================  ==================================================================
column                  value
======================  ==================================================================
Efficacy                % of cases with p(new) > p(true) on the rewrite prompt
Paraphrase              same, averaged over the paraphrase prompts of a case
Neighborhood            % with p(true) > p(new) on other entities' prompts (method attached)
Rel. spec.              % of the entity's other relations whose top-1 prediction is unchanged
Implied                 % of implied relations (nationality -> language) changed as implied
Consistency             TF-IDF similarity x 100 of generations to texts about the new value
Fluency                 weighted bi-/tri-gram entropy of generations (bits)
Essence                 TF-IDF similarity x 100 of "{entity} is ..." text with vs. without
Ess. fluency            fluency of that text
======================  ==================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import benchmarks, io

logger = logging.getLogger(__name__)

Results = Mapping[str, benchmarks.BenchmarkResult]
"""One method's results, by benchmark name."""


@dataclass(frozen=True)
class Column:
    """A column of the summary: where its number comes from and how it is shown."""

    key: str
    header: str
    benchmark: str
    value: Callable[[benchmarks.BenchmarkResult], float | None]
    percent: bool = True
    """Shown x 100 (a share or a similarity); else as is (fluency, in bits)."""


def _score(result: benchmarks.BenchmarkResult) -> float | None:
    return result.metrics.score.mean if isinstance(result, benchmarks.ProbabilityResults) else None


def _unchanged(result: benchmarks.BenchmarkResult) -> float | None:
    if isinstance(result, benchmarks.RelationSpecificityResults) and result.unchanged:
        return result.unchanged.mean
    return None


def _implied(result: benchmarks.BenchmarkResult) -> float | None:
    if isinstance(result, benchmarks.RelationSpecificityResults) and result.implied_changed:
        return result.implied_changed.mean
    return None


def _consistency(result: benchmarks.BenchmarkResult) -> float | None:
    if isinstance(result, benchmarks.GenerationResults) and result.consistency:
        return result.consistency.mean
    return None


def _fluency(result: benchmarks.BenchmarkResult) -> float | None:
    if isinstance(result, benchmarks.GenerationResults | benchmarks.EssenceResults):
        return result.fluency.mean
    return None


def _essence(result: benchmarks.BenchmarkResult) -> float | None:
    if isinstance(result, benchmarks.EssenceResults) and result.similarity:
        return result.similarity.mean
    return None


COLUMNS: tuple[Column, ...] = (
    Column("efficacy", "Efficacy", "efficacy", _score),
    Column("paraphrase", "Paraphrase", "paraphrase", _score),
    Column("neighborhood", "Neighborhood", "neighborhood", _score),
    Column("relation_specificity", "Rel. spec.", "relation_specificity", _unchanged),
    Column("implied", "Implied", "relation_specificity", _implied),
    Column("consistency", "Consistency", "generation", _consistency),
    Column("fluency", "Fluency", "generation", _fluency, percent=False),
    Column("essence", "Essence", "essence", _essence),
    Column("essence_fluency", "Ess. fluency", "essence", _fluency, percent=False),
)


@dataclass
class SummaryRow(DataClassJsonMixin):
    """One method's headline numbers (percent columns already x 100; None: not available)."""

    method: str
    label: str
    cases: int
    values: dict[str, float | None]


@dataclass
class Summary(DataClassJsonMixin):
    """The summary table of one evaluation."""

    title: str
    rows: list[SummaryRow]
    notes: list[str] = field(default_factory=list)


def method_label(result: benchmarks.BenchmarkResult) -> str:
    """A readable name for the method a result was computed with."""
    settings = result.settings
    if settings.method == "remedi":
        details = settings.method_details
        editor_type = details.get("editor_type", "")
        suffix = f", {editor_type}" if editor_type and editor_type != "linear" else ""
        return f"REMEDI (layer {details.get('layer', '?')}{suffix})"
    return settings.method.capitalize()


def summarize(results: Mapping[str, Results], title: str = "") -> Summary:
    """Build the summary from ``{method: {benchmark: result}}`` (rows in the mapping's order)."""
    rows, notes = [], []
    for method, by_benchmark in results.items():
        if not by_benchmark:
            continue
        any_result = next(iter(by_benchmark.values()))
        values: dict[str, float | None] = {}
        for column in COLUMNS:
            result = by_benchmark.get(column.benchmark)
            value = column.value(result) if result is not None else None
            if value is not None and (column.percent and not math.isnan(value)):
                value = 100.0 * value
            values[column.key] = value
        efficacy = by_benchmark.get("efficacy")
        cases = len(efficacy.cases) if isinstance(efficacy, benchmarks.ProbabilityResults) else 0
        rows.append(
            SummaryRow(method=method, label=method_label(any_result), cases=cases, values=values)
        )
        notes += _missing_notes(method, by_benchmark)
    notes = list(dict.fromkeys(notes))
    return Summary(title=title, rows=rows, notes=notes)


def _missing_notes(method: str, results: Results) -> list[str]:
    notes = []
    relation = results.get("relation_specificity")
    if isinstance(relation, benchmarks.RelationSpecificityResults) and not relation.available:
        notes.append(f"Rel. spec., Implied: n/a ({relation.reason})")
    generation = results.get("generation")
    if isinstance(generation, benchmarks.GenerationResults) and generation.consistency_missing:
        notes.append(f"Consistency ({method}): {generation.consistency_missing}")
    essence = results.get("essence")
    if isinstance(essence, benchmarks.EssenceResults) and essence.similarity_missing:
        notes.append(f"Essence: n/a ({essence.similarity_missing})")
    return notes


def _format(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.1f}" if percent else f"{value:.2f}"


LEGEND = (
    "Efficacy, Paraphrase: % of cases where p(new) > p(true); Neighborhood: % where p(true) > "
    "p(new) on other entities' prompts; Rel. spec.: % of the entity's other relations with an "
    "unchanged top-1 prediction; Implied: % of implied relations changed to the implied value; "
    "Consistency, Essence: TF-IDF similarity x 100; Fluency: weighted n-gram entropy (bits)."
)


def markdown_table(summary: Summary) -> str:
    """The summary as a GitHub markdown table, with a legend and notes."""
    headers = ["Method", "N", *(column.header for column in COLUMNS)]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in summary.rows:
        cells = [row.label, str(row.cases)]
        cells += [_format(row.values.get(c.key), c.percent) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"### {summary.title}\n\n" if summary.title else "") + "\n".join(lines) + "\n"
    text += f"\n{LEGEND}\n"
    if summary.notes:
        text += "\n" + "\n".join(f"- {note}" for note in summary.notes) + "\n"
    return text


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def latex_table(summary: Summary) -> str:
    """The summary as a LaTeX ``table`` (booktabs), best value per column in bold."""
    best = _best_values(summary)
    headers = ["Method", "N", *(column.header for column in COLUMNS)]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(_latex_escape(header) for header in headers) + r" \\",
        r"\midrule",
    ]
    for row in summary.rows:
        cells = [_latex_escape(row.label), str(row.cases)]
        for column in COLUMNS:
            value = row.values.get(column.key)
            cell = _latex_escape(_format(value, column.percent))
            if value is not None and value == best.get(column.key):
                cell = rf"\textbf{{{cell}}}"
            cells.append(cell)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = _latex_escape(f"{summary.title}. {LEGEND}" if summary.title else LEGEND)
    lines += [rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _best_values(summary: Summary) -> dict[str, float]:
    """Highest value of each column (set in bold), when there is more than one row."""
    best: dict[str, float] = {}
    for column in COLUMNS:
        values = [
            value
            for row in summary.rows
            if (value := row.values.get(column.key)) is not None and not math.isnan(value)
        ]
        if values and len(summary.rows) > 1:
            best[column.key] = max(values)
    return best


def plot_summary(summary: Summary, path: Path) -> Path:
    """A grouped bar chart of the percent columns, fluency beside it; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    percent_columns = [c for c in COLUMNS if c.percent]
    other_columns = [c for c in COLUMNS if not c.percent]
    figure, (left, right) = plt.subplots(
        1,
        2,
        figsize=(13, 4.5),
        gridspec_kw={"width_ratios": [len(percent_columns), max(2, len(other_columns))]},
    )
    colors = matplotlib.colormaps["tab10"]
    width = 0.8 / max(1, len(summary.rows))
    for axis, columns in ((left, percent_columns), (right, other_columns)):
        for index, row in enumerate(summary.rows):
            positions = [
                position + (index - (len(summary.rows) - 1) / 2) * width
                for position in range(len(columns))
            ]
            heights = [row.values.get(column.key) for column in columns]
            bars = axis.bar(
                positions,
                [0.0 if h is None or math.isnan(h) else h for h in heights],
                width=width,
                label=row.label,
                color=colors(index % 10),
            )
            for bar, height in zip(bars, heights, strict=True):
                text = "n/a" if height is None or math.isnan(height) else f"{height:.0f}"
                if not columns[0].percent and text != "n/a":
                    text = f"{height:.1f}"
                axis.annotate(
                    text,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
        axis.set_xticks(range(len(columns)))
        axis.set_xticklabels([column.header for column in columns], rotation=20, ha="right")
        axis.spines[["top", "right"]].set_visible(False)
    left.set_ylim(0, 110)
    left.set_ylabel("% (higher is better)")
    right.set_ylabel("n-gram entropy (bits)")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    if summary.title:
        figure.suptitle(summary.title)
    figure.tight_layout()

    def save(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=150)

    try:
        io.atomic_write(Path(path), save)
    finally:
        plt.close(figure)
    return Path(path)


@dataclass(frozen=True)
class SummaryFiles:
    markdown: Path
    latex: Path
    plot: Path
    json: Path


def write_summary(summary: Summary, directory: Path) -> SummaryFiles:
    """Write ``summary.md``, ``summary.tex``, ``summary.png`` and ``summary.json``."""
    directory = Path(directory)
    files = SummaryFiles(
        markdown=directory / "summary.md",
        latex=directory / "summary.tex",
        plot=directory / "summary.png",
        json=directory / "summary.json",
    )
    io.write_text(files.markdown, markdown_table(summary))
    io.write_text(files.latex, latex_table(summary))
    io.write_json(files.json, summary.to_dict())
    plot_summary(summary, files.plot)
    return files


def read_results(
    experiment_dir: Path, methods: Sequence[str] | None = None
) -> dict[str, dict[str, benchmarks.BenchmarkResult]]:
    """Read every complete result file under ``experiment_dir/<method>/<benchmark>.json``."""
    experiment_dir = Path(experiment_dir)
    if methods is None:
        methods = sorted(p.name for p in experiment_dir.iterdir() if p.is_dir())
    results: dict[str, dict[str, benchmarks.BenchmarkResult]] = {}
    for method in methods:
        results[method] = {}
        for name in benchmarks.BENCHMARKS:
            result = benchmarks.read_result(experiment_dir / method / f"{name}.json", name)
            if result is not None:
                results[method][name] = result
    return results
