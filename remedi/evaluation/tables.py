"""Moved to :mod:`remedi.report.tables`, which new code imports.

Only a re-export, kept for ``entailment.py`` and ``problems.py`` while other branches of the
redesign edit them; delete it once they import :mod:`remedi.report.tables`.
"""

from remedi.report.tables import (
    Table,
    TableFiles,
    TableRow,
    aggregate_tables,
    latex,
    markdown,
    plot,
    write_table,
)

__all__ = [
    "Table",
    "TableFiles",
    "TableRow",
    "aggregate_tables",
    "latex",
    "markdown",
    "plot",
    "write_table",
]
