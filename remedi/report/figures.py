"""Figures: the one plotting style of remedi and the one way a figure reaches disk.

Every plot draws through :func:`pyplot` (matplotlib without a display), takes its colours from
:func:`color` (one palette: one colour per method or run within a figure), lays out its panels
with :func:`panel_grid` and is written by :func:`save`: a PNG at :data:`DPI`, replaced in one
rename so that a crash leaves the old file or none, the figure closed even when writing fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from remedi import io

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PALETTE = "tab10"
"""Matplotlib's qualitative palette; it repeats after :data:`PALETTE_SIZE` colours."""
PALETTE_SIZE = 10
DPI = 150


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def color(index: int) -> tuple[float, float, float, float]:
    """The ``index``-th colour of the palette (RGBA), cycling after :data:`PALETTE_SIZE`."""
    import matplotlib

    red, green, blue, alpha = matplotlib.colormaps[PALETTE](index % PALETTE_SIZE)
    return red, green, blue, alpha


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG atomically, then close it (also when writing fails)."""
    path = Path(path)

    def write(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=DPI)

    try:
        io.atomic_write(path, write)
    finally:
        pyplot().close(figure)
    return path


def panel_grid(
    count: int, panel_size: tuple[float, float], columns: int = 3, share_x: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels, ``columns`` to a row, each ``panel_size`` inches (width,
    height); the unused cells of the last row are hidden.

    With ``share_x`` every panel shows the same x range (the union of their data), so that the
    panels of one figure can be read against each other point by point.
    """
    columns = min(columns, max(1, count))
    rows = max(1, math.ceil(count / columns))
    width, height = panel_size
    figure, grid = pyplot().subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False
    )
    axes = [axis for row in grid for axis in row]
    for axis in axes[count:]:
        axis.axis("off")
    if share_x:
        for axis in axes[1:count]:
            axis.sharex(axes[0])
    return figure, axes[:count]


def grouped_bars(
    axis: Axes,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    spreads: Sequence[Sequence[float | None]] | None = None,
    annotate: bool = False,
    rotation: float = 0.0,
) -> None:
    """One group of bars per name in ``groups``, one bar per ``(label, heights)`` series in it,
    each series in its palette colour; a missing height (None or NaN) is drawn as 0.

    ``spreads`` (per series, per group) become error bars; ``annotate`` writes each bar's
    value ("n/a" for a missing one) above it.
    """
    width = 0.8 / max(1, len(series))
    for index, (label, heights) in enumerate(series):
        positions = [
            position + (index - (len(series) - 1) / 2) * width for position in range(len(groups))
        ]
        error_bars = spreads[index] if spreads is not None else None
        bars = axis.bar(
            positions,
            [_or_zero(height) for height in heights],
            width=width,
            label=label,
            color=color(index),
            yerr=(
                [_or_zero(error) for error in error_bars]
                if error_bars is not None and any(error is not None for error in error_bars)
                else None
            ),
        )
        if annotate:
            for bar, height in zip(bars, heights, strict=True):
                axis.annotate(
                    "n/a" if _missing(height) else f"{height:.0f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels(groups, rotation=rotation, ha="right")
    axis.spines[["top", "right"]].set_visible(False)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _or_zero(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else value
