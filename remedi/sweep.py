"""Layer sweeps: one evaluation per layer, every metric against the layer, and the best layer.

As in the REMEDI reference (``experiments/sweep.py``), five sweeps pick the layers the paper
uses, each on 1,000 samples (the reference's ``--small`` rows; ours by default from the runs'
validation splits, see ``tasks.py``):

- ``gen``: editors trained at each layer, evaluated on CounterFact (``scripts.eval_fact_gen``, one
  experiment per layer, ``layer_<L>/``);
- ``gen_biosbias``: Bias in Bios editors trained at each layer (``scripts.eval_bias_gen``,
  ``layer_<L>/``);
- ``ent``: McRae editors trained at each layer (``scripts.eval_entailment``, ``layer_<L>/``);
- ``cls``: one editor, the entity read at each layer (``scripts.eval_fact_cls --entity-layers``);
- ``cls_biosbias``: one Bias in Bios editor, the entity read at each layer
  (``scripts.eval_bias_cls --entity-layers``).

Each sweep picks its layer by a :class:`Criterion` (:data:`CRITERIA`); the default is the
reference's, read from the notebook that draws its layer plots (``notebooks/figures/ablations.ipynb``
of github.com/evandez/REMEDI; line numbers are of the notebook's JSON):

- ``gen``: the harmonic mean of paraphrase (its efficacy score on the paraphrase prompts),
  consistency and fluency, over every layer but the model's last (lines 44, 52-68; essence is left
  out there "to be consistent with ROME", line 66);
- ``gen_biosbias``: the harmonic mean of decontextual top-1 accuracy and fluency, the last layer
  left out too (the ``[:-1]`` of line 44 comes before the dataset's branch; lines 40-41, 72-80);
- ``cls`` and ``cls_biosbias``: the highest F1 (CounterFact: contextual, i.e. Fact-Med) over the
  entity layers from the editor layer up (lines 218-236, 261; the layers its
  ``scripts/eval_fact_cls.py:47-49`` and ``eval_bias_cls.py:59-61`` read by default, with the
  editor layer ``experiments/sweep.py:45-46`` passes);
- ``ent``: the highest correlation of the co-occurring features' post-edit probabilities with
  the norms (``co_corr_post``, lines 375-382).

Terms are divided to the reference's units first (a share, a cosine, an n-gram entropy): the
harmonic mean is not scale-free. A term not measured at every candidate layer (SmolLM2's EasyEdit
CounterFact has no attribute snippets, so no consistency; a sweep run without the generation
benchmark has no fluency) is left out and the sweep says which terms it used; with none, no layer
is chosen. Our earlier criteria stay as named options: ``rome_score`` for ``gen`` (ROME's score S,
the harmonic mean of efficacy, paraphrase and neighborhood, by which SmolLM2's layer was chosen)
and ``top1`` for ``gen_biosbias`` (decontextual top-1 accuracy alone).

Each evaluation writes its own result files and skips finished ones, so a sweep resumes where it
stopped and a finished layer is never recomputed; :func:`write_sweep` only reads them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io
from remedi.evaluation.editing import biosbias, counterfact_report
from remedi.evaluation.probing import bios_classification, classification, entailment
from remedi.report import figures, tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Criterion:
    """How a sweep picks its layer: the highest harmonic mean of ``terms`` (one term: that
    metric), each divided by its scale first, among the candidate layers."""

    terms: Mapping[str, float]
    """Metric key -> the divisor that brings our value to the reference's units (our tables show
    shares and similarities in percent, CounterFact's fluency x 100)."""
    description: str
    skip_last_layer: bool = False
    """Leave the model's last layer out (the reference's CounterFact and Bias in Bios sweeps)."""
    from_editor_layer: bool = False
    """Only entity layers from the editor layer up (the reference's classification sweeps)."""


REFERENCE = "reference"
CRITERIA: Mapping[str, Mapping[str, Criterion]] = {
    "gen": {
        REFERENCE: Criterion(
            {"paraphrase": 100.0, "consistency": 100.0, "fluency": 100.0},
            "harmonic mean of paraphrase, consistency and fluency, the model's last layer left "
            "out (the reference's)",
            skip_last_layer=True,
        ),
        "rome_score": Criterion(
            {"score": 1.0},
            "ROME's score S (harmonic mean of efficacy, paraphrase and neighborhood)",
        ),
    },
    "gen_biosbias": {
        REFERENCE: Criterion(
            {"decontextual.top1_accuracy": 100.0, "decontextual.fluency": 1.0},
            "harmonic mean of decontextual top-1 accuracy and fluency, the model's last layer "
            "left out (the reference's)",
            skip_last_layer=True,
        ),
        "top1": Criterion({"decontextual.top1_accuracy": 1.0}, "decontextual top-1 accuracy alone"),
    },
    "cls": {
        REFERENCE: Criterion(
            {"contextual.f1": 1.0},
            "Fact-Med (contextual) F1, entity layers from the editor layer up (the reference's)",
            from_editor_layer=True,
        )
    },
    "cls_biosbias": {
        REFERENCE: Criterion(
            {"f1": 1.0},
            "Bios-Med F1, entity layers from the editor layer up (the reference's)",
            from_editor_layer=True,
        )
    },
    "ent": {
        REFERENCE: Criterion(
            {"co.r": 1.0},
            "correlation of the co-occurring features with the norms after the edit (the "
            "reference's)",
        )
    },
}
"""Sweep kind -> criterion name -> :class:`Criterion`; every kind has the reference's."""


@dataclass
class SweepPoint(DataClassJsonMixin):
    layer: int
    metrics: dict[str, float | None]
    criterion: float | None = None
    """The criterion's value at this layer (None: not a candidate, or a term is missing)."""


@dataclass
class Sweep(DataClassJsonMixin):
    kind: str
    criterion: str
    """The criterion's name (a key of ``CRITERIA[kind]``)."""
    points: list[SweepPoint]
    best_layer: int | None
    notes: list[str] = field(default_factory=list)
    rule: str = ""
    """The criterion in words."""
    terms: list[str] = field(default_factory=list)
    """The criterion's terms that were measured at every candidate layer (the ones it used)."""
    missing_terms: list[str] = field(default_factory=list)
    """Its terms that were not, left out of the harmonic mean."""
    candidates: list[int] = field(default_factory=list)
    """The layers it chose among."""


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
    """The layer with the highest metric ``criterion`` (NaN and missing values never win; ties
    go to the lower layer)."""
    scored = [
        (value, point.layer)
        for point in points
        if (value := point.metrics.get(criterion)) is not None and not math.isnan(value)
    ]
    return max(scored, key=lambda item: (item[0], -item[1]))[1] if scored else None


def _measured(point: SweepPoint, key: str) -> bool:
    value = point.metrics.get(key)
    return value is not None and not math.isnan(value)


def select_layer(
    kind: str,
    points: Sequence[SweepPoint],
    criterion: str = REFERENCE,
    num_layers: int | None = None,
    editor_layer: int | None = None,
) -> Sweep:
    """Pick the layer of ``points`` by the criterion named ``criterion`` of sweep ``kind``.

    ``num_layers`` (the model's) says which layer is the last, ``editor_layer`` where the entity
    layers start; without them, no layer is left out, and the notes say so. Each point's
    ``criterion`` value is set (None for a layer that is not a candidate).
    """
    choices = CRITERIA.get(kind)
    if choices is None:
        raise errors.UsageError(f"unknown sweep {kind!r}; use one of {', '.join(CRITERIA)}")
    if criterion not in choices:
        raise errors.UsageError(
            f"the {kind} sweep has no criterion {criterion!r}; use one of {', '.join(choices)}"
        )
    rule = choices[criterion]
    notes = [f"Criterion: {criterion}, {rule.description}."]
    candidates = list(points)
    if rule.skip_last_layer:
        if num_layers is None:
            notes.append("The model's number of layers is not known: no layer is left out.")
        else:
            candidates = [point for point in candidates if point.layer != num_layers - 1]
            notes.append(f"Layer {num_layers - 1}, the model's last, is not a candidate.")
    if rule.from_editor_layer:
        if editor_layer is None:
            notes.append("The editor layer is not known: every swept entity layer is a candidate.")
        else:
            candidates = [point for point in candidates if point.layer >= editor_layer]
            notes.append(
                f"Entity layers below the editor layer ({editor_layer}) are not candidates."
            )
    terms = [key for key in rule.terms if candidates and all(_measured(p, key) for p in candidates)]
    missing = [key for key in rule.terms if key not in terms]
    if missing:
        notes.append(
            f"Not measured at every candidate layer, left out of the criterion: {', '.join(missing)}"
            f"; it uses {', '.join(terms) or 'nothing'}."
        )
    for point in points:
        point.criterion = None
    for point in candidates if terms else []:
        values = [(point.metrics[key] or 0.0) / rule.terms[key] for key in terms]
        # One term is the metric itself, whatever its sign (a correlation may be negative,
        # where a harmonic mean is 0).
        point.criterion = (
            values[0] if len(values) == 1 else counterfact_report.harmonic_mean(values)
        )
    scored = [(point.criterion, point.layer) for point in candidates if point.criterion is not None]
    best = max(scored, key=lambda item: (item[0], -item[1]))[1] if scored else None
    if best is None:
        notes.append("No layer chosen: no term of the criterion was measured at every candidate.")
    else:
        notes.append(f"Best layer by {criterion}: {best}.")
    return Sweep(
        kind,
        criterion,
        list(points),
        best,
        notes,
        rule=rule.description,
        terms=terms,
        missing_terms=missing,
        candidates=[point.layer for point in candidates],
    )


def plot_sweep(sweep: Sweep, path: Path, title: str = "") -> Path:
    """Every metric and the criterion against the layer (one panel each), the best layer
    marked; PNG."""
    from matplotlib.ticker import MaxNLocator

    keys = [*sorted({key for point in sweep.points for key in point.metrics}), "criterion"]
    values = [{**point.metrics, "criterion": point.criterion} for point in sweep.points]
    figure, axes = figures.panel_grid(len(keys), panel_size=(4, 3))
    for axis, key in zip(axes, keys, strict=True):
        pairs = [
            (point.layer, value)
            for point, point_values in zip(sweep.points, values, strict=True)
            if (value := point_values.get(key)) is not None
        ]
        axis.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o")
        if sweep.best_layer is not None:
            axis.axvline(sweep.best_layer, color="grey", linestyle="--", linewidth=0.8)
        if key == "criterion":
            label = f"criterion ({sweep.criterion})"
        else:
            label = key + (" (in the criterion)" if key in sweep.terms else "")
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("layer")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figures.save(figure, path)


def write_sweep(
    kind: str,
    experiment_dir: Path,
    layers: Sequence[int],
    title: str = "",
    criterion: str = REFERENCE,
    num_layers: int | None = None,
    editor_layer: int | None = None,
) -> tuple[Sweep, tables.TableFiles]:
    """Collect a sweep's results, pick the best layer by ``criterion`` (see
    :func:`select_layer`), write ``sweep.{json,md,tex}``, ``sweep_result.json`` and
    ``sweep_layers.png`` (every metric against the layer)."""
    if kind not in COLLECTORS:
        raise errors.UsageError(f"unknown sweep {kind!r}; use one of {', '.join(COLLECTORS)}")
    points = collect_points(kind, experiment_dir, layers)
    if not points:
        raise errors.MissingFileError(
            f"no results for any of layers {list(layers)} under {experiment_dir}; run the "
            "sweep's evaluations first"
        )
    sweep = select_layer(kind, points, criterion, num_layers, editor_layer)
    keys = sorted({key for point in points for key in point.metrics})
    chosen = f"criterion ({criterion})"
    table = tables.Table(
        title=title or f"{kind} sweep",
        columns={**{key: key for key in keys}, "criterion": chosen},
        rows=[
            tables.TableRow(
                f"layer {point.layer}" + (" (best)" if point.layer == sweep.best_layer else ""),
                {**point.metrics, "criterion": point.criterion},
            )
            for point in points
        ],
        notes=sweep.notes,
        digits=3,
    )
    files = tables.write_table(table, experiment_dir, "sweep")
    io.write_json(Path(experiment_dir) / "sweep_result.json", sweep.to_dict())
    plot_sweep(sweep, Path(experiment_dir) / "sweep_layers.png", title)
    return sweep, files
