"""Harm curves: each task's score against the number of edits, one line per method and mode.

Reads the ``checkpoint_<N>.json`` files that :func:`remedi.evaluation.general.harm.run_harm` writes
(one directory per method, mode and RECT setting) and makes the paper's figures (a PNG with one
panel per measure) and a markdown table (one row per run and checkpoint), both through
:mod:`remedi.report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remedi import io
from remedi.evaluation.general.harm import Checkpoint
from remedi.methods import rect
from remedi.report import figures, tables

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EDIT_FIELDS = {
    "efficacy": "efficacy",
    "efficacy_token_accuracy": "efficacy (token acc.)",
    "generalization": "generalization",
    "generalization_token_accuracy": "generalization (token acc.)",
    "locality": "locality",
}
"""Each edit score's measure name: exact match, and beside it EasyEdit's token accuracy (the
edit success Gu et al. report; absent from runs scored before it)."""
EDIT_MEASURES = tuple(EDIT_FIELDS.values())
MODE_MARKERS = {"instance-sequential": "o", "batch-single": "s", "batch-sequential": "^"}


@dataclass
class Curve:
    """One run: its label and, per measure, the score at each number of edits."""

    label: str
    points: dict[str, dict[int, float]]
    mode: str = ""
    rect: bool = False
    """Whether RECT or a baseline regularised the run's weight updates."""


def run_label(checkpoint: Checkpoint) -> str:
    """``<method>[ (<setting>)] <mode>[ b<batch>][ +RECT|Random|PCA<share>]``: how a run is
    named in the table and legend."""
    label = checkpoint.method
    if checkpoint.hparams_setting:
        label += f" ({checkpoint.hparams_setting})"
    label += f" {checkpoint.mode}"
    if checkpoint.mode == "batch-sequential":
        label += f" b{checkpoint.batch_size}"
    if checkpoint.rect_share is not None:
        name = rect.LABELS.get(checkpoint.regularizer, checkpoint.regularizer)
        label += f" +{name}{checkpoint.rect_share:g}"
    return label


def read_curves(directories: Sequence[Path]) -> list[Curve]:
    """A curve per run directory holding ``checkpoint_*.json`` (others are skipped)."""
    curves = []
    for directory in sorted(directories):
        files = sorted(Path(directory).glob("checkpoint_*.json"))
        if not files:
            continue
        checkpoints = [Checkpoint.from_dict(io.read_json(f, "harm checkpoint")) for f in files]
        points: dict[str, dict[int, float]] = {}
        for checkpoint in checkpoints:
            if checkpoint.edits is not None:
                for field_name, measure in EDIT_FIELDS.items():
                    value = getattr(checkpoint.edits, field_name)
                    if value is not None:
                        points.setdefault(measure, {})[checkpoint.num_edits] = value
            for score in checkpoint.tasks:
                key = f"{score.task}/{score.protocol}:{score.metric}"
                points.setdefault(key, {})[checkpoint.num_edits] = score.score
        first = checkpoints[0]
        curves.append(Curve(run_label(first), points, first.mode, first.rect_share is not None))
    return curves


def measures_of(curves: Sequence[Curve]) -> list[str]:
    """Every measure, edit measures first."""
    seen = {measure for curve in curves for measure in curve.points}
    return [m for m in EDIT_MEASURES if m in seen] + sorted(seen - set(EDIT_MEASURES))


def markdown_table(curves: Sequence[Curve]) -> str:
    """One row per run and number of edits, one column per measure."""
    measures = measures_of(curves)
    headers = ["run", "edits", *measures]
    rows = []
    for curve in curves:
        numbers = sorted({n for points in curve.points.values() for n in points})
        for number in numbers:
            values = (curve.points.get(measure, {}).get(number) for measure in measures)
            cells = [tables.format_number(value, 3, missing="") for value in values]
            rows.append([curve.label, str(number), *cells])
    return "\n".join(tables.markdown_grid(headers, rows, left_aligned=len(headers))) + "\n"


def curves_figure(curves: Sequence[Curve]) -> Figure:
    """One panel per measure: score against the number of edits (symlog axis), a line per run.

    Each run has its own colour; its mode is also told by the marker, RECT by dashes. The panels
    share one x axis, so the unedited model's point (0 edits, where the data has it) and every
    later checkpoint line up across the edit and the task panels.
    """
    measures = measures_of(curves)
    figure, axes = figures.panel_grid(len(measures), panel_size=(5, 3.4), share_x=True)
    for axis, measure in zip(axes, measures, strict=True):
        for index, curve in enumerate(curves):
            points = sorted(curve.points.get(measure, {}).items())
            if points:
                axis.plot(
                    *zip(*points, strict=True),
                    "--" if curve.rect else "-",
                    color=figures.color(index),
                    marker=MODE_MARKERS.get(curve.mode, "o"),
                    markersize=4,
                    label=curve.label,
                )
        axis.set_xscale("symlog", linthresh=1)
        axis.set_title(measure, fontsize=9)
        axis.set_xlabel("number of edits")
    # A run missing from the first panel still belongs in the legend: gather every panel's.
    legend: dict[str, Any] = {}
    for axis in axes:
        handles, labels = axis.get_legend_handles_labels()
        for handle, label in zip(handles, labels, strict=True):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(curves) / 3), 1, 1))
    return figure


def plot_curves(curves: Sequence[Curve], path: Path) -> Path:
    """:func:`curves_figure` written as a PNG at ``path``."""
    return figures.save(curves_figure(curves), path)
