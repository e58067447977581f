"""Small result tables (rows x columns of numbers) as markdown, LaTeX, JSON and a bar chart.

The CounterFact editing table has its own layout (:mod:`remedi.report`); the probing, mediation
and entailment tables are plain grids, written here the same way: ``<stem>.md``, ``<stem>.tex``,
``<stem>.json`` and ``<stem>.png`` in one directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import io, metrics


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


def _cell(value: float | None, digits: int, spread: float | None = None, pm: str = "±") -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if spread is None or math.isnan(spread):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} {pm} {spread:.{digits}f}"


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
    headers = ["", *table.columns.values()]
    lines = [f"**{table.title}**", ""] if table.title else []
    lines += [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in table.rows:
        cells = [
            _cell(row.values.get(key), table.digits, row.spreads.get(key)) for key in table.columns
        ]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    lines += [""] + [f"- {note}" for note in table.notes] if table.notes else []
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def latex(table: Table) -> str:
    """The table as a LaTeX ``tabular`` (booktabs), the title as a comment."""
    spec = "l" + "r" * len(table.columns)
    lines = [f"% {table.title}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(["", *map(_latex_escape, table.columns.values())]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [
            _cell(row.values.get(key), table.digits, row.spreads.get(key), pm=r"$\pm$")
            for key in table.columns
        ]
        lines.append(" & ".join([_latex_escape(row.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot(table: Table, path: Path) -> Path:
    """A grouped bar chart: one group per column, one bar per row; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(table.columns)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(keys) + 2), 4.0))
    width = 0.8 / max(1, len(table.rows))
    colors = matplotlib.colormaps["tab10"]
    for index, row in enumerate(table.rows):
        offset = (index - (len(table.rows) - 1) / 2) * width
        heights = [row.values.get(key) for key in keys]
        spreads = [row.spreads.get(key) for key in keys]
        axis.bar(
            [position + offset for position in range(len(keys))],
            [0.0 if h is None or math.isnan(h) else h for h in heights],
            width=width,
            label=row.label,
            color=colors(index % 10),
            yerr=(
                [0.0 if e is None or math.isnan(e) else e for e in spreads]
                if any(e is not None for e in spreads)
                else None
            ),
        )
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.set_xticks(range(len(keys)))
    axis.set_xticklabels([table.columns[key] for key in keys], rotation=15, ha="right")
    axis.spines[["top", "right"]].set_visible(False)
    axis.legend(fontsize=8, frameon=False)
    if table.title:
        axis.set_title(table.title, fontsize=9)
    figure.tight_layout()

    def save(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=150)

    try:
        io.atomic_write(Path(path), save)
    finally:
        plt.close(figure)
    return Path(path)


@dataclass(frozen=True)
class TableFiles:
    markdown: Path
    latex: Path
    json: Path
    plot: Path


def write_table(table: Table, directory: Path, stem: str) -> TableFiles:
    """Write ``<stem>.md``, ``.tex``, ``.json`` and ``.png`` under ``directory``."""
    directory = Path(directory)
    files = TableFiles(
        markdown=directory / f"{stem}.md",
        latex=directory / f"{stem}.tex",
        json=directory / f"{stem}.json",
        plot=directory / f"{stem}.png",
    )
    io.write_text(files.markdown, markdown(table))
    io.write_text(files.latex, latex(table))
    io.write_json(files.json, table.to_dict())
    plot(table, files.plot)
    return files
