"""Harm curves: each task's score against the number of edits, one line per method and mode.

Reads the ``checkpoint_<N>.json`` files that :func:`remedi.evaluation.harm.run_harm` writes
(one directory per method, mode and RECT setting) and makes the paper's figures (a PNG with one
panel per measure) and a markdown table (one row per run and checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from remedi import io
from remedi.evaluation.harm import Checkpoint

EDIT_MEASURES = ("efficacy", "generalization", "locality")


@dataclass
class Curve:
    """One run: its label and, per measure, the score at each number of edits."""

    label: str
    points: dict[str, dict[int, float]]


def run_label(checkpoint: Checkpoint) -> str:
    label = f"{checkpoint.method} {checkpoint.mode}"
    if checkpoint.mode == "batch-sequential":
        label += f" b{checkpoint.batch_size}"
    if checkpoint.rect_share is not None:
        label += f" +RECT{checkpoint.rect_share:g}"
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
                for measure in EDIT_MEASURES:
                    value = getattr(checkpoint.edits, measure)
                    points.setdefault(measure, {})[checkpoint.num_edits] = value
            for score in checkpoint.tasks:
                key = f"{score.task}/{score.protocol}:{score.metric}"
                points.setdefault(key, {})[checkpoint.num_edits] = score.score
        curves.append(Curve(run_label(checkpoints[0]), points))
    return curves


def measures_of(curves: Sequence[Curve]) -> list[str]:
    """Every measure, edit measures first."""
    seen = {measure for curve in curves for measure in curve.points}
    return [m for m in EDIT_MEASURES if m in seen] + sorted(seen - set(EDIT_MEASURES))


def markdown_table(curves: Sequence[Curve]) -> str:
    """One row per run and number of edits, one column per measure."""
    measures = measures_of(curves)
    header = "| run | edits | " + " | ".join(measures) + " |"
    lines = [header, "|" + "---|" * (len(measures) + 2)]
    for curve in curves:
        numbers = sorted({n for points in curve.points.values() for n in points})
        for number in numbers:
            cells = []
            for measure in measures:
                value = curve.points.get(measure, {}).get(number)
                cells.append("" if value is None or math.isnan(value) else f"{value:.3f}")
            lines.append(f"| {curve.label} | {number} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: Sequence[Curve], path: Path) -> Path:
    """One panel per measure: score against the number of edits (symlog axis), a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = measures_of(curves)
    # Colour per method, marker per mode, dashes for RECT: runs that coincide stay readable.
    methods = sorted({curve.label.split(" ")[0] for curve in curves})
    colors = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    markers = {"instance-sequential": "o", "batch-single": "s", "batch-sequential": "^"}
    columns = min(3, max(len(measures), 1))
    rows = math.ceil(len(measures) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for index, measure in enumerate(measures):
        axis = axes[index // columns][index % columns]
        for curve in curves:
            points = sorted(curve.points.get(measure, {}).items())
            if points:
                method, mode = curve.label.split(" ")[:2]
                axis.plot(
                    *zip(*points, strict=True),
                    "--" if "RECT" in curve.label else "-",
                    color=colors[method],
                    marker=markers.get(mode, "o"),
                    markersize=4,
                    label=curve.label,
                )
        axis.set_xscale("symlog", linthresh=1)
        axis.set_title(measure, fontsize=9)
        axis.set_xlabel("number of edits")
    for index in range(len(measures), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(curves) / 3), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
