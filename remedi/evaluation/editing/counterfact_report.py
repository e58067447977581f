"""The CounterFact editing summary a person can paste: markdown and LaTeX tables, a bar plot.

Written through :mod:`remedi.report` (its table layouts, escaping, palette and atomic saves);
this module says what the CounterFact table holds.

One row per method (REMEDI, then the baselines), one column per headline number, on the scale of
ROME's CounterFact tables so that rows can sit next to published ones:

======================  ==================================================================
column                  value
======================  ==================================================================
Score                   harmonic mean of Efficacy, Paraphrase and Neighborhood (ROME's S)
Efficacy                % of cases with p(new) > p(true) on the case's prompt
Paraphrase              same, averaged over the paraphrase prompts of a case
Neighborhood            % with p(true) > p(new) on other entities' prompts (method attached)
Rel. spec.              % of the entity's other relations whose top-1 prediction is unchanged
Implied                 % of implied relations (nationality -> language) changed as implied
Consistency             TF-IDF similarity x 100 of generations to texts about the new value
Fluency                 weighted bi-/tri-gram entropy of generations x 100 (ROME's GE)
Essence                 TF-IDF similarity x 100 of "{entity} is ..." text with vs. without
Ess. fluency            fluency of that text (x 100, as Fluency)
======================  ==================================================================

Several summaries of the same evaluation (e.g. one per toy-world seed) aggregate into one with
:func:`aggregate_summaries`: each cell is then the mean over seeds ± their standard deviation.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import evaluation, metrics
from remedi.methods import registry
from remedi.report import figures, tables

logger = logging.getLogger(__name__)

Results = Mapping[str, evaluation.BenchmarkResult]
"""One method's results, by benchmark name."""


@dataclass(frozen=True)
class Column:
    """A column of the summary: where its number comes from and how it is shown."""

    key: str
    header: str
    benchmark: str
    value: Callable[[evaluation.BenchmarkResult], float | None]
    percent: bool = True
    """A share or a similarity in [0, 100]; else a fluency (n-gram entropy x 100)."""
    scale: float = 100.0


def _score(result: evaluation.BenchmarkResult) -> float | None:
    return result.metrics.score.mean if isinstance(result, evaluation.ProbabilityResults) else None


def _unchanged(result: evaluation.BenchmarkResult) -> float | None:
    if isinstance(result, evaluation.RelationSpecificityResults) and result.unchanged:
        return result.unchanged.mean
    return None


def _implied(result: evaluation.BenchmarkResult) -> float | None:
    if isinstance(result, evaluation.RelationSpecificityResults) and result.implied_changed:
        return result.implied_changed.mean
    return None


def _consistency(result: evaluation.BenchmarkResult) -> float | None:
    if isinstance(result, evaluation.GenerationResults) and result.consistency:
        return result.consistency.mean
    return None


def _fluency(result: evaluation.BenchmarkResult) -> float | None:
    if isinstance(result, evaluation.GenerationResults | evaluation.EssenceResults):
        return result.fluency.mean
    return None


def _essence(result: evaluation.BenchmarkResult) -> float | None:
    if isinstance(result, evaluation.EssenceResults) and result.similarity:
        return result.similarity.mean
    return None


SCORE_KEY = "score"
SCORE_PARTS = ("efficacy", "paraphrase", "neighborhood")
"""ROME's score S is the harmonic mean of these columns."""

COLUMNS: tuple[Column, ...] = (
    Column(SCORE_KEY, "Score", "", lambda result: None),
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


def harmonic_mean(values: Sequence[float | None]) -> float | None:
    """Harmonic mean (0 if any value is 0; None if any is missing or NaN), as ROME's S."""
    if not values or any(value is None or math.isnan(value) for value in values):
        return None
    present = [float(value) for value in values if value is not None]
    if any(value <= 0 for value in present):
        return 0.0
    return len(present) / sum(1.0 / value for value in present)


@dataclass
class SummaryRow(DataClassJsonMixin):
    """One method's headline numbers (already scaled; None: not available)."""

    method: str
    label: str
    cases: int
    values: dict[str, float | None]
    spreads: dict[str, float | None] = field(default_factory=dict)
    """Standard deviation across seeds of each value (aggregated summaries only)."""


@dataclass
class Summary(DataClassJsonMixin):
    """The summary table of one evaluation (or the mean over ``seeds`` evaluations)."""

    title: str
    rows: list[SummaryRow]
    notes: list[str] = field(default_factory=list)
    seeds: int = 1


def method_label(result: evaluation.BenchmarkResult) -> str:
    """A readable name for the method a result was computed with."""
    settings = result.settings
    if settings.method == "remedi":
        details = settings.method_details
        editor_type = details.get("editor_type", "")
        suffix = f", {editor_type}" if editor_type and editor_type != "linear" else ""
        return f"REMEDI (layer {details.get('layer', '?')}{suffix})"
    spec = registry.METHODS.get(settings.method)
    if spec is not None and spec.edits == "weights":
        return spec.label  # "ROME", "FT-L (5 layers)": the registry's name, not "Rome"
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
            if value is not None and not math.isnan(value):
                value = column.scale * value
            values[column.key] = value
        values[SCORE_KEY] = harmonic_mean([values[key] for key in SCORE_PARTS])
        efficacy = by_benchmark.get("efficacy")
        cases = len(efficacy.cases) if isinstance(efficacy, evaluation.ProbabilityResults) else 0
        rows.append(
            SummaryRow(method=method, label=method_label(any_result), cases=cases, values=values)
        )
        notes += _missing_notes(method, by_benchmark)
        if efficacy is not None:
            scoring = efficacy.settings.target_scoring
            notes.append(
                f"Targets scored by {scoring} token log-probability; cases ask the "
                f"{efficacy.settings.prompt_source} prompt."
            )
    notes = list(dict.fromkeys(notes))
    return Summary(title=title, rows=rows, notes=notes)


def aggregate_summaries(summaries: Sequence[Summary], title: str = "") -> Summary:
    """Mean and standard deviation (n - 1) of each cell over several summaries (e.g. seeds).

    Rows are matched by method; a method missing from some summaries is averaged over the
    others (and noted). A cell is None if it is missing from every summary.
    """
    if not summaries:
        raise ValueError("no summaries to aggregate")
    methods = list(dict.fromkeys(row.method for s in summaries for row in s.rows))
    rows, notes = [], []
    for method in methods:
        found = [row for s in summaries for row in s.rows if row.method == method]
        if len(found) < len(summaries):
            notes.append(f"{found[0].label}: in {len(found)} of {len(summaries)} runs")
        values: dict[str, float | None] = {}
        spreads: dict[str, float | None] = {}
        for column in COLUMNS:
            values[column.key], spreads[column.key] = metrics.mean_and_spread(
                [row.values.get(column.key) for row in found]
            )
        cases = round(statistics.fmean(row.cases for row in found))
        rows.append(SummaryRow(method, found[0].label, cases=cases, values=values, spreads=spreads))
    for summary in summaries:
        notes += summary.notes
    return Summary(title=title, rows=rows, notes=list(dict.fromkeys(notes)), seeds=len(summaries))


def _missing_notes(method: str, results: Results) -> list[str]:
    notes = []
    relation = results.get("relation_specificity")
    if isinstance(relation, evaluation.RelationSpecificityResults) and not relation.available:
        notes.append(f"Rel. spec., Implied: n/a ({relation.reason})")
    generation = results.get("generation")
    if isinstance(generation, evaluation.GenerationResults) and generation.consistency_missing:
        notes.append(f"Consistency ({method}): {generation.consistency_missing}")
    essence = results.get("essence")
    if isinstance(essence, evaluation.EssenceResults) and essence.similarity_missing:
        notes.append(f"Essence: n/a ({essence.similarity_missing})")
    return notes


def format_cell(value: float | None, spread: float | None = None) -> str:
    """A cell as printed: one decimal, with "± spread" when the summary aggregates seeds."""
    return tables.format_number(value, 1, spread)


LEGEND = (
    "Score: harmonic mean of Efficacy, Paraphrase and Neighborhood (ROME's S); Efficacy, "
    "Paraphrase: % of cases where p(new) > p(true); Neighborhood: % where p(true) > p(new) on "
    "other entities' prompts; Rel. spec.: % of the entity's other relations with an unchanged "
    "top-1 prediction; Implied: % of implied relations changed to the implied value; "
    "Consistency, Essence: TF-IDF similarity x 100; Fluency: weighted n-gram entropy x 100 "
    "(ROME's GE)."
)


def _seed_note(summary: Summary) -> str:
    if summary.seeds <= 1:
        return ""
    return (
        f"Mean ± standard deviation over {summary.seeds} seeds; digits vary across CPUs "
        "(float rounding), the same seed on the same machine is bit-identical."
    )


HEADERS = ("Method", "N", *(column.header for column in COLUMNS))


def markdown_table(summary: Summary) -> str:
    """The summary as a GitHub markdown table, with a legend and notes."""
    lines = tables.markdown_grid(
        HEADERS,
        (
            [
                row.label,
                str(row.cases),
                *(format_cell(row.values.get(c.key), row.spreads.get(c.key)) for c in COLUMNS),
            ]
            for row in summary.rows
        ),
    )
    text = (f"### {summary.title}\n\n" if summary.title else "") + "\n".join(lines) + "\n"
    text += f"\n{LEGEND}\n"
    if summary.seeds > 1:
        text += f"\n{_seed_note(summary)}\n"
    if summary.notes:
        text += "\n" + "\n".join(f"- {note}" for note in summary.notes) + "\n"
    return text


def latex_table(summary: Summary) -> str:
    """The summary as a LaTeX ``table`` (booktabs), best value per column in bold."""
    best = _best_values(summary)
    rows = []
    for row in summary.rows:
        cells = [tables.latex_escape(row.label), str(row.cases)]
        for column in COLUMNS:
            value = row.values.get(column.key)
            cell = tables.latex_escape(format_cell(value, row.spreads.get(column.key)))
            if value is not None and value == best.get(column.key):
                cell = rf"\textbf{{{cell}}}"
            cells.append(cell)
        rows.append(cells)
    legend = " ".join(part for part in (LEGEND, _seed_note(summary)) if part)
    caption = tables.latex_escape(f"{summary.title}. {legend}" if summary.title else legend)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        *tables.latex_tabular(HEADERS, rows),
        rf"\caption{{{caption}}}",
        r"\end{table}",
    ]
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
    percent_columns = [c for c in COLUMNS if c.percent]
    other_columns = [c for c in COLUMNS if not c.percent]
    figure, (left, right) = figures.pyplot().subplots(
        1,
        2,
        figsize=(13, 4.5),
        gridspec_kw={"width_ratios": [len(percent_columns), max(2, len(other_columns))]},
    )
    for axis, columns in ((left, percent_columns), (right, other_columns)):
        figures.grouped_bars(
            axis,
            [column.header for column in columns],
            [
                (row.label, [row.values.get(column.key) for column in columns])
                for row in summary.rows
            ],
            annotate=True,
            rotation=20,
        )
    left.set_ylim(0, 110)
    left.set_ylabel("% (higher is better)")
    right.set_ylabel("n-gram entropy x 100 (ROME's GE)")
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, frameon=False)
    if summary.title:
        figure.suptitle(summary.title)
    figure.tight_layout()
    return figures.save(figure, path)


def write_summary(summary: Summary, directory: Path) -> tables.TableFiles:
    """Write ``summary.md``, ``summary.tex``, ``summary.png`` and ``summary.json``."""
    return tables.write_files(
        directory,
        "summary",
        markdown_table(summary),
        latex_table(summary),
        summary.to_dict(),
        lambda path: plot_summary(summary, path),
    )


def read_results(
    experiment_dir: Path, methods: Sequence[str] | None = None
) -> dict[str, dict[str, evaluation.BenchmarkResult]]:
    """Read every complete result file under ``experiment_dir/<method>/<benchmark>.json``."""
    experiment_dir = Path(experiment_dir)
    if methods is None:
        methods = sorted(p.name for p in experiment_dir.iterdir() if p.is_dir())
    results: dict[str, dict[str, evaluation.BenchmarkResult]] = {}
    for method in methods:
        results[method] = {}
        for name in evaluation.BENCHMARKS:
            result = evaluation.read_result(experiment_dir / method / f"{name}.json", name)
            if result is not None:
                results[method][name] = result
    return results
