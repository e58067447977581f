"""Moved to :mod:`remedi.report.tables`; this name stays only until the modules that other
branches of the reporting redesign are editing (``entailment``, ``problems``) import that
module instead. New code imports :mod:`remedi.report.tables`."""

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
