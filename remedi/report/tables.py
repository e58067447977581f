"""Tables: one writer of markdown and LaTeX for every table remedi prints, and the plain grid.

The pieces every table is made of live here once: :func:`format_number` (a cell, "n/a" when
missing, "mean ± sd" over runs), :func:`latex_escape`, :func:`markdown_grid` and
:func:`latex_tabular` (the GitHub and booktabs layouts), and :func:`write_files` (the
``<stem>.{md,tex,json,png}`` a table is written as, each file atomically).

:class:`Table` is the plain grid (rows x columns of numbers) the probing, mediation, entailment,
edit-problem, canonical-example and sweep tables are; the CounterFact editing summary
(:mod:`remedi.evaluation.editing.counterfact_report`) and the harm curves
(:mod:`remedi.evaluation.general.harm_report`) lay out their own rows with the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataclasses_json import DataClassJsonMixin

from remedi import io, metrics
from remedi.report import figures


@dataclass
class TableRow(DataClassJsonMixin):
    """One row: its label and a value per column key (None: not available)."""

    label: str
    values: dict[str, float | None]
    spreads: dict[str, float | None] = field(default_factory=dict)
    """Standard deviation per column over runs (tables made by :func:`aggregate_tables`)."""


@dataclass
class Table(DataClassJsonMixin):
    """A titled grid of numbers; ``columns`` maps column key -> header, in order."""

    title: str
    columns: dict[str, str]
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)
    digits: int = 2


def format_number(
    value: float | None,
    digits: int,
    spread: float | None = None,
    plus_minus: str = "±",
    missing: str = "n/a",
) -> str:
    """A cell as printed: ``digits`` decimals, "value ± spread" when a spread over runs is known,
    ``missing`` for None or NaN. LaTeX passes ``plus_minus=r"$\\pm$"``."""
    if value is None or math.isnan(value):
        return missing
    if spread is None or math.isnan(spread):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} {plus_minus} {spread:.{digits}f}"


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


def latex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally: every character LaTeX treats specially escaped."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def markdown_grid(
    headers: Sequence[str], rows: Iterable[Sequence[str]], left_aligned: int = 1
) -> list[str]:
    """The lines of a GitHub markdown table: the first ``left_aligned`` columns (the labels)
    left-aligned, the rest (the numbers) right-aligned. Cells are written as given."""
    alignments = ["---"] * left_aligned + ["---:"] * (len(headers) - left_aligned)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(alignments) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def latex_tabular(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    column_spec: str | None = None,
    above_headers: Sequence[Sequence[str]] = (),
) -> list[str]:
    """The lines of a booktabs ``tabular``: by default a label column, then right-aligned numbers.

    Headers are plain text (escaped here); row cells are LaTeX already, so that a caller can set
    a cell in bold or write ``$\\pm$`` (escape labels with :func:`latex_escape`). A table whose
    columns come in groups passes its ``column_spec`` and the group titles as LaTeX rows in
    ``above_headers`` (e.g. ``\\multicolumn`` cells).
    """
    spec = column_spec or "l" + "r" * (len(headers) - 1)
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule"]
    lines += [" & ".join(cells) + r" \\" for cells in above_headers]
    lines += [" & ".join(map(latex_escape, headers)) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in rows]
    return [*lines, r"\bottomrule", r"\end{tabular}"]


@dataclass(frozen=True)
class TableFiles:
    """Where a table was written: markdown, LaTeX, its JSON (the numbers) and its plot."""

    markdown: Path
    latex: Path
    json: Path
    plot: Path


def write_files(
    directory: Path,
    stem: str,
    markdown_text: str,
    latex_text: str,
    data: Any,
    plot: Callable[[Path], Path],
) -> TableFiles:
    """Write ``<stem>.md``, ``<stem>.tex``, ``<stem>.json`` (``data``) and ``<stem>.png`` (drawn
    by ``plot(path)``) under ``directory``, each atomically."""
    directory = Path(directory)
    files = TableFiles(
        markdown=directory / f"{stem}.md",
        latex=directory / f"{stem}.tex",
        json=directory / f"{stem}.json",
        plot=directory / f"{stem}.png",
    )
    io.write_text(files.markdown, markdown_text)
    io.write_text(files.latex, latex_text)
    io.write_json(files.json, data)
    plot(files.plot)
    return files


def aggregate_tables(tables: Sequence[Table], title: str = "") -> Table:
    """Mean and standard deviation (n - 1) of each cell over several tables of one layout (e.g.
    one per split seed). Rows are matched by label; a row missing from some tables is averaged
    over the others (and noted); the tables' notes are kept, each once.

    Raises:
        ValueError: No tables, or tables whose columns differ (runs of different benchmarks).
    """
    if not tables:
        raise ValueError("no tables to aggregate")
    columns = tables[0].columns
    for index, table in enumerate(tables[1:], start=1):
        if table.columns != columns:
            raise ValueError(
                f"table {index} ({table.title!r}) has columns {list(table.columns.values())}, "
                f"table 0 ({tables[0].title!r}) {list(columns.values())}: aggregate runs of "
                "one benchmark only"
            )
    labels = list(dict.fromkeys(row.label for table in tables for row in table.rows))
    rows, notes = [], [f"mean ± standard deviation over {len(tables)} runs"]
    for label in labels:
        found = [row for table in tables for row in table.rows if row.label == label]
        if len(found) < len(tables):
            notes.append(f"{label}: in {len(found)} of {len(tables)} runs")
        values: dict[str, float | None] = {}
        spreads: dict[str, float | None] = {}
        for key in columns:
            values[key], spreads[key] = metrics.mean_and_spread(
                [row.values.get(key) for row in found]
            )
        rows.append(TableRow(label, values, spreads))
    notes += [note for table in tables for note in table.notes]
    return Table(
        title=title,
        columns=dict(columns),
        rows=rows,
        notes=list(dict.fromkeys(notes)),
        digits=tables[0].digits,
    )


def markdown(table: Table) -> str:
    """The table as GitHub markdown, title first and notes after."""
    lines = [f"**{table.title}**", ""] if table.title else []
    lines += markdown_grid(
        ["", *table.columns.values()],
        (
            [
                row.label,
                *(
                    format_number(row.values.get(key), table.digits, row.spreads.get(key))
                    for key in table.columns
                ),
            ]
            for row in table.rows
        ),
    )
    lines += [""] + [f"- {note}" for note in table.notes] if table.notes else []
    return "\n".join(lines) + "\n"


def latex(table: Table) -> str:
    """The table as a LaTeX ``tabular`` (booktabs), the title as a comment."""
    rows = (
        [
            latex_escape(row.label),
            *(
                format_number(
                    row.values.get(key), table.digits, row.spreads.get(key), plus_minus=r"$\pm$"
                )
                for key in table.columns
            ),
        ]
        for row in table.rows
    )
    lines = [f"% {table.title}", *latex_tabular(["", *table.columns.values()], rows)]
    return "\n".join(lines) + "\n"


def plot(table: Table, path: Path) -> Path:
    """A grouped bar chart: one group per column, one bar per row; written as PNG."""
    keys = list(table.columns)
    figure, axis = figures.pyplot().subplots(figsize=(max(5.0, 1.6 * len(keys) + 2), 4.0))
    figures.grouped_bars(
        axis,
        [table.columns[key] for key in keys],
        [(row.label, [row.values.get(key) for key in keys]) for row in table.rows],
        spreads=[[row.spreads.get(key) for key in keys] for row in table.rows],
        rotation=15,
    )
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.legend(fontsize=8, frameon=False)
    if table.title:
        axis.set_title(table.title, fontsize=9)
    figure.tight_layout()
    return figures.save(figure, path)


def write_table(table: Table, directory: Path, stem: str) -> TableFiles:
    """Write ``<stem>.md``, ``.tex``, ``.json`` and ``.png`` under ``directory``."""
    return write_files(
        directory,
        stem,
        markdown(table),
        latex(table),
        table.to_dict(),
        lambda path: plot(table, path),
    )
