"""Small result tables (rows x columns of numbers) as markdown, LaTeX, JSON and a bar chart.

The CounterFact editing table has its own layout (:mod:`remedi.report`); the probing, mediation
and entailment tables are plain grids, written here the same way: ``<stem>.md``, ``<stem>.tex``,
``<stem>.json`` and ``<stem>.png`` in one directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dataclasses_json import DataClassJsonMixin

from remedi import io


@dataclass
class TableRow(DataClassJsonMixin):
    """One row: its label and a value per column key (None: not available)."""

    label: str
    values: dict[str, float | None]


@dataclass
class Table(DataClassJsonMixin):
    """A titled grid of numbers; ``columns`` maps column key -> header, in order."""

    title: str
    columns: dict[str, str]
    rows: list[TableRow]
    notes: list[str] = field(default_factory=list)
    digits: int = 2


def _cell(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown(table: Table) -> str:
    """The table as GitHub markdown, title first and notes after."""
    headers = ["", *table.columns.values()]
    lines = [f"**{table.title}**", ""] if table.title else []
    lines += [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in table.rows:
        cells = [_cell(row.values.get(key), table.digits) for key in table.columns]
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
        cells = [_cell(row.values.get(key), table.digits) for key in table.columns]
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
        axis.bar(
            [position + offset for position in range(len(keys))],
            [0.0 if h is None or math.isnan(h) else h for h in heights],
            width=width,
            label=row.label,
            color=colors(index % 10),
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
