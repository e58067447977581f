"""Layer sweeps: one evaluation per layer, every metric against the layer, and the best layer.

As in the REMEDI reference (``experiments/sweep.py``), three sweeps pick the layers the paper
uses, each on a small split:

- ``gen``: editors trained at each layer, evaluated on CounterFact's efficacy, paraphrase and
  neighborhood (``scripts.eval_fact_gen``, one experiment per layer, ``layer_<L>/``); the best
  layer has the highest ROME score S (harmonic mean of the three);
- ``cls``: one editor, the entity read at each layer (``scripts.eval_fact_cls --entity-layers``);
  the best layer has the highest Fact-Med F1 (the paper's headline probing number);
- ``ent``: McRae editors trained at each layer (``scripts.eval_entailment``, ``layer_<L>/``);
  the best layer has the highest correlation of co-occurring features with the norms;
- ``gen_biosbias``: Bias in Bios editors trained at each layer (``scripts.eval_bias_gen``,
  ``layer_<L>/``); the best layer has the highest decontextual top-1 accuracy (the occupation
  carried by the edit alone, the paper's error-correction headline);
- ``cls_biosbias``: one Bias in Bios editor, the entity read at each layer
  (``scripts.eval_bias_cls --entity-layers``); the best layer has the highest Bios-Med F1.

Each evaluation writes its own result files and skips finished ones, so a sweep resumes where it
stopped and a finished layer is never recomputed; :func:`write_sweep` only reads them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io
from remedi.evaluation.editing import biosbias, counterfact_report
from remedi.evaluation.probing import bios_classification, classification, entailment
from remedi.report import figures, tables

logger = logging.getLogger(__name__)

CRITERIA = {
    "gen": "score",
    "cls": "contextual.f1",
    "ent": "co.r",
    "gen_biosbias": "decontextual.top1_accuracy",
    "cls_biosbias": "f1",
}
"""The metric each sweep maximises to pick its layer."""


@dataclass
class SweepPoint(DataClassJsonMixin):
    layer: int
    metrics: dict[str, float | None]


@dataclass
class Sweep(DataClassJsonMixin):
    kind: str
    criterion: str
    points: list[SweepPoint]
    best_layer: int | None
    notes: list[str] = field(default_factory=list)


def layer_dir(experiment_dir: Path, layer: int) -> Path:
    """``<experiment_dir>/layer_<L>``: one layer's evaluation in the gen and ent sweeps."""
    return Path(experiment_dir) / f"layer_{layer}"


LayerValues = dict[str, float | None]


def _summary(experiment_dir: Path, layer: int, what: str) -> Any | None:
    """The JSON of ``layer_<L>/summary.json``, or ``None`` (logged) where that layer has none."""
    path = layer_dir(experiment_dir, layer) / "summary.json"
    if not path.is_file():
        logger.warning("no summary for layer %d at %s; skipped", layer, path)
        return None
    return io.read_json(path, what)


def gen_values(experiment_dir: Path, layer: int) -> LayerValues | None:
    """REMEDI's summary numbers of one layer's CounterFact evaluation."""
    summary = _summary(experiment_dir, layer, "evaluation summary")
    if summary is None:
        return None
    rows = [
        row for row in counterfact_report.Summary.from_dict(summary).rows if row.method == "remedi"
    ]
    if not rows:  # benchmarks the sweep did not run have no value
        return None
    return {key: value for key, value in rows[0].values.items() if value is not None}


def cls_values(experiment_dir: Path, layer: int) -> LayerValues | None:
    """REMEDI's classification metrics with the entity read at ``layer``."""
    result = classification.read_result(classification.result_file(experiment_dir, "remedi", layer))
    if result is None:
        logger.warning("no classification result for entity layer %d; skipped", layer)
        return None
    values: LayerValues = {}
    for task in classification.TASKS:
        task_metrics = getattr(result.metrics, task)
        for name in ("f1", "mcc", "accuracy"):
            values[f"{task}.{name}"] = getattr(task_metrics, name)
    return values


def ent_values(experiment_dir: Path, layer: int) -> LayerValues | None:
    """REMEDI's entailment metrics of one layer's McRae evaluation."""
    path = layer_dir(experiment_dir, layer) / "remedi" / "entailment.json"
    if not path.is_file():
        logger.warning("no entailment result for layer %d at %s; skipped", layer, path)
        return None
    result = entailment.EntailmentResults.from_dict(io.read_json(path, "entailment"))
    values: LayerValues = {
        f"{kind}.delta_p": value for kind, value in result.metrics.delta_p.items()
    }
    values.update({f"{kind}.r": value for kind, value in result.metrics.correlation.items()})
    return values


def gen_biosbias_values(experiment_dir: Path, layer: int) -> LayerValues | None:
    """REMEDI's Bias in Bios error-correction numbers of one layer (``layer_<L>/summary.json``
    of ``scripts.eval_bias_gen``): top-1/top-k accuracy (%), fluency, consistency per setting."""
    summary = _summary(experiment_dir, layer, "Bias in Bios summary")
    if summary is None:
        return None
    rows = [row for row in summary.get("rows", []) if row.get("method") == "remedi"]
    if not rows:
        return None
    values: LayerValues = {}
    for setting in biosbias.SETTINGS:
        for key, value in (rows[0].get(setting) or {}).items():
            if key != "k":
                values[f"{setting}.{key}"] = value
    return values


def cls_biosbias_values(experiment_dir: Path, layer: int) -> LayerValues | None:
    """REMEDI's Bios-Med metrics with the entity read at ``layer``."""
    result = bios_classification.read_result(
        bios_classification.result_file(experiment_dir, "remedi", layer)
    )
    if result is None:
        logger.warning("no Bias in Bios classification result for entity layer %d", layer)
        return None
    names = ("f1", "mcc", "accuracy", "probe_recall_1", "probe_recall_k")
    return {name: getattr(result.metrics, name) for name in names}


COLLECTORS: dict[str, Callable[[Path, int], LayerValues | None]] = {
    "gen": gen_values,
    "cls": cls_values,
    "ent": ent_values,
    "gen_biosbias": gen_biosbias_values,
    "cls_biosbias": cls_biosbias_values,
}
"""Sweep kind -> the values of one layer's evaluation (``None``: that layer is skipped)."""


def collect_points(kind: str, experiment_dir: Path, layers: Sequence[int]) -> list[SweepPoint]:
    """One point per layer of ``layers`` whose evaluation has values, in order."""
    points = []
    for layer in layers:
        values = COLLECTORS[kind](experiment_dir, layer)
        if values is not None:
            points.append(SweepPoint(layer, values))
    return points


def best_layer(points: Sequence[SweepPoint], criterion: str) -> int | None:
    """The layer with the highest ``criterion`` (NaN and missing values never win)."""
    scored = [
        (value, point.layer)
        for point in points
        if (value := point.metrics.get(criterion)) is not None and not math.isnan(value)
    ]
    return max(scored, key=lambda item: (item[0], -item[1]))[1] if scored else None


def plot_sweep(sweep: Sweep, path: Path, title: str = "") -> Path:
    """Every metric against the layer (one panel each), the best layer marked; PNG."""
    from matplotlib.ticker import MaxNLocator

    keys = sorted({key for point in sweep.points for key in point.metrics})
    figure, axes = figures.panel_grid(len(keys), panel_size=(4, 3))
    for axis, key in zip(axes, keys, strict=True):
        pairs = [
            (point.layer, value)
            for point in sweep.points
            if (value := point.metrics.get(key)) is not None
        ]
        axis.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o")
        if sweep.best_layer is not None:
            axis.axvline(sweep.best_layer, color="grey", linestyle="--", linewidth=0.8)
        axis.set_title(key + (" (criterion)" if key == sweep.criterion else ""), fontsize=9)
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figures.save(figure, path)


def write_sweep(
    kind: str, experiment_dir: Path, layers: Sequence[int], title: str = ""
) -> tuple[Sweep, tables.TableFiles]:
    """Collect a sweep's results, pick the best layer, write ``sweep.{json,md,tex}`` and
    ``sweep_layers.png`` (every metric against the layer)."""
    if kind not in COLLECTORS:
        raise errors.UsageError(f"unknown sweep {kind!r}; use one of {', '.join(COLLECTORS)}")
    points = collect_points(kind, experiment_dir, layers)
    if not points:
        raise errors.MissingFileError(
            f"no results for any of layers {list(layers)} under {experiment_dir}; run the "
            "sweep's evaluations first"
        )
    criterion = CRITERIA[kind]
    best = best_layer(points, criterion)
    sweep = Sweep(kind, criterion, points, best, [f"best layer by {criterion}: {best}"])
    keys = sorted({key for point in points for key in point.metrics})
    table = tables.Table(
        title=title or f"{kind} sweep",
        columns={key: key for key in keys},
        rows=[tables.TableRow(f"layer {point.layer}", dict(point.metrics)) for point in points],
        notes=sweep.notes,
        digits=3,
    )
    files = tables.write_table(table, experiment_dir, "sweep")
    io.write_json(Path(experiment_dir) / "sweep_result.json", sweep.to_dict())
    plot_sweep(sweep, Path(experiment_dir) / "sweep_layers.png", title)
    return sweep, files
