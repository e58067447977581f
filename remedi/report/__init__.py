"""Reporting: every table and figure remedi writes goes through this package.

- :mod:`~remedi.report.tables`: markdown and LaTeX (one escaper, one cell format), the plain
  grid of numbers most benchmarks print, mean ± sd over runs, and the files a table is
  written as;
- :mod:`~remedi.report.figures`: the plotting style (one palette, one resolution), panel
  layouts, grouped bars, and the atomic PNG save.

Like :mod:`remedi.metrics`, this package knows no suite: it imports nothing above
:mod:`remedi.io` and :mod:`remedi.metrics`, so any suite may write through it. What a suite's
table holds stays beside the suite (e.g. :mod:`remedi.evaluation.editing.counterfact_report`, ROME's
columns; :mod:`remedi.evaluation.general.harm_report`, score against the number of edits).
"""

from remedi.report import figures, tables

__all__ = ["figures", "tables"]
