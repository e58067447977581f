"""REMEDI as a probe: do the editor's directions predict what the LM will say?

An editor maps an attribute's representation to a direction in the LM's hidden space. If the
LM's representation of an entity already points along the direction of an attribute, the LM
already assigns that attribute to the entity. This benchmark follows the REMEDI reference
(``benchmarks.classification`` with ``Editor.classify``, ``scripts/eval_fact_cls.py``):

- **Labels** come from the unedited LM (:mod:`remedi.evaluation.probing.mediation`): in context
  (*Fact-Med*), whether it prefers the context's value ``target_mediated`` over its prior
  ``target_unmediated`` (first tokens' log-probs); out of context (*Fact-Prior*), whether it
  prefers its prior over the context's value.
- **Predictions** come from the editor: the direction for the mediated attribute (the sample's
  context) and for the unmediated one (the same context with ``target_mediated`` replaced by
  ``target_unmediated``) are compared with the entity's hidden state at the *entity layer*
  (its last token, in the prompt after the context for Fact-Med and the prompt alone for
  Fact-Prior). Entity states and each kind of direction are standardised per dimension over
  the evaluated samples (zero mean, unit variance), then scored by dot product; the prediction
  is "target" when the target's direction scores higher.
- **Metrics**: F1 and MCC (and accuracy). In both tasks the positive class is the LM *failing*
  at the task (to mediate the context's value for Fact-Med, to keep its prior for Fact-Prior):
  labels and predictions are flipped before F1, in both tasks as in the reference
  (``benchmarks.classification``: "classify whether the model will *not* make the correct
  prediction"); MCC and accuracy do not change. F1 of the positive class depends on how often
  the LM fails: compare rows of one LM (or MCC across LMs). Each row's table note gives the F1
  that needs no signal (every sample called a failure, :func:`metrics.constant_positive_f1`).
- **Control task**: the labels shuffled with a seed (class balance kept), same predictions.

On the toy worlds: the default world's LM learns every entity's facts equally firmly (each is
stated as often as any other), so whether it keeps its prior or follows a context depends on
the values' tokens, not on the entity, and the entity's state has nothing to reveal. The
``"toy-longtail"`` world (:mod:`remedi.toy.popularity`) gives entities graded popularity, as
real ones have, so that the LM knows some facts firmly, some weakly and some not at all, and
holds to the facts it knows well against a context that contradicts them: the world on which
the probe has something to find.

Differences from the reference: a dimension with zero variance is left centred (divided by 1)
instead of producing NaN; editors that read the entity are given the entity as they were
trained (on its own at the editor layer, see :mod:`remedi.precompute`), where the reference
passed the probed state itself (of the entity layer, in the probed prompt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dataclasses_json import DataClassJsonMixin

from remedi import editors, errors, io, metrics, models, precompute
from remedi.evaluation.probing.mediation import (
    TASKS,
    ContextReadings,
    read_samples,
    sample_rows,
    task_targets,
)
from remedi.report import tables

logger = logging.getLogger(__name__)

DEFAULT_CONTROL_TASK_SEED = 0

TASK_NAMES = {"contextual": "Fact-Med", "decontextual": "Fact-Prior"}
"""The paper's names of the two tasks on CounterFact."""


def unmediated_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each sample with ``target_mediated`` replaced by ``target_unmediated`` in its context and
    attribute (the reference's ``context_unmediated``/``attribute_unmediated``).

    Raises:
        SampleError: The context does not mention ``target_mediated``, so no unmediated
            attribute can be made from it.
    """
    swapped = []
    for row in rows:
        mediated, unmediated = row["target_mediated"], row["target_unmediated"]
        if mediated not in row["context"] or mediated not in row["attribute"]:
            raise errors.SampleError(
                f"sample {row['id']}: the context {row['context']!r} (attribute "
                f"{row['attribute']!r}) does not state target_mediated {mediated!r}; "
                "classification needs contexts that state the new value"
            )
        swapped.append(
            {
                **row,
                "context": row["context"].replace(mediated, unmediated),
                "attribute": row["attribute"].replace(mediated, unmediated),
            }
        )
    return swapped


def standardize(values: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit (sample) variance per dimension over rows; constant dimensions are
    only centred."""
    values = values.double()
    std = values.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (values - values.mean(dim=0)) / std


@dataclass
class ClassifierOutputs(DataClassJsonMixin):
    """One sample of one task: the LM's log-probs (label) and the probe's scores (prediction)."""

    logp_target: float
    logp_comparator: float
    score_target: float
    score_comparator: float

    @property
    def label(self) -> bool:
        """The LM prefers the target."""
        return self.logp_target > self.logp_comparator

    @property
    def prediction(self) -> bool:
        """The probe scores the target's direction higher."""
        return self.score_target > self.score_comparator


@dataclass
class ClassificationSample(DataClassJsonMixin):
    id: str
    contextual: ClassifierOutputs
    decontextual: ClassifierOutputs


@dataclass
class ClassifierTaskMetrics(DataClassJsonMixin):
    f1: float
    mcc: float
    accuracy: float
    label_rate: float
    """Share of samples whose (unflipped, unshuffled) label is true: the LM's mediation rate."""


@dataclass
class ClassifierMetrics(DataClassJsonMixin):
    contextual: ClassifierTaskMetrics
    decontextual: ClassifierTaskMetrics


@dataclass
class ClassificationSettings(DataClassJsonMixin):
    """What a classification result was computed with."""

    model: str
    random_init: bool
    editor_type: str
    editor_layer: int
    entity_layer: int
    entity_token: str
    normalize: bool
    control_task: bool
    control_task_seed: int
    samples: int


@dataclass
class ClassificationResults(DataClassJsonMixin):
    settings: ClassificationSettings
    metrics: ClassifierMetrics
    samples: list[ClassificationSample] = field(default_factory=list)


def control_labels(labels: Sequence[bool], seed: int) -> list[bool]:
    """The labels in a seeded random order (the control task: same balance, no signal)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return [bool(labels[index]) for index in order]


def task_metrics(
    outputs: Sequence[ClassifierOutputs],
    control_task: bool = False,
    control_task_seed: int = DEFAULT_CONTROL_TASK_SEED,
) -> ClassifierTaskMetrics:
    """F1, MCC and accuracy of one task, as the reference computes them (see module doc): the
    positive class is the LM failing at the task."""
    labels = [output.label for output in outputs]
    label_rate = metrics.share(labels)
    predictions = [output.prediction for output in outputs]
    if control_task:
        labels = control_labels(labels, control_task_seed)
    labels = [not label for label in labels]
    predictions = [not prediction for prediction in predictions]
    return ClassifierTaskMetrics(
        f1=metrics.f1_score(labels, predictions),
        mcc=metrics.matthews_corrcoef(labels, predictions),
        accuracy=metrics.accuracy(labels, predictions),
        label_rate=label_rate,
    )


@torch.no_grad()
def probe_scores(
    entity_states: torch.Tensor, directions: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Row-wise dot product of entity states and directions (n,), float64, each standardised
    over the rows first when ``normalize``."""
    if normalize:
        entity_states, directions = standardize(entity_states), standardize(directions)
    return (entity_states.double() * directions.double()).sum(dim=-1)


@torch.no_grad()
def classification(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    samples: precompute.Samples,
    entity_layer: int | None = None,
    entity_token: str = "last",
    normalize: bool = True,
    control_task: bool = False,
    control_task_seed: int = DEFAULT_CONTROL_TASK_SEED,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    random_init: bool = False,
    readings: ContextReadings | None = None,
) -> ClassificationResults:
    """Classify, with ``editor``'s directions, whether the LM mediates each sample's fact.

    Args:
        mt: The LM (the one the editor was trained on).
        editor: The editor whose directions probe the entity.
        samples: Samples with both targets (a ``datasets.Dataset`` or dicts).
        entity_layer: Layer of the entity's state (default: the editor's layer).
        entity_token: "last" (the reference's) or "average" over the entity's tokens.
        normalize: Standardise states and directions before the dot product (the reference's
            default).
        control_task: Score against seeded shuffled labels instead.
        control_task_seed: Seed of the shuffle.
        batch_size: Samples per forward pass.
        random_init: Recorded in the settings: ``mt`` is the randomly initialised control.
        readings: The samples' readings by :func:`read_samples` at ``entity_layer``, to share
            one LM pass between editors and settings.
    """
    rows = sample_rows(samples)
    if len(rows) < 2:
        raise errors.UsageError("classification needs at least 2 samples (it standardises)")
    entity_layer = editor.layer if entity_layer is None else entity_layer
    if readings is None:
        readings = read_samples(mt, rows, [entity_layer], batch_size)
    mediated = editors.editor_directions(mt, editor, rows, batch_size).cpu()
    unmediated = editors.editor_directions(mt, editor, unmediated_rows(rows), batch_size).cpu()

    outputs: dict[str, list[ClassifierOutputs]] = {}
    for task in TASKS:
        entity_states = getattr(readings, task).entity(entity_layer, entity_token)
        score_mediated = probe_scores(entity_states, mediated, normalize)
        score_unmediated = probe_scores(entity_states, unmediated, normalize)
        logp_target, logp_comparator = task_targets(readings, task)
        score_target, score_comparator = (
            (score_mediated, score_unmediated)
            if task == "contextual"
            else (score_unmediated, score_mediated)
        )
        outputs[task] = [
            ClassifierOutputs(*values)
            for values in zip(
                logp_target.tolist(),
                logp_comparator.tolist(),
                score_target.tolist(),
                score_comparator.tolist(),
                strict=True,
            )
        ]
    task_results = {
        task: task_metrics(outputs[task], control_task, control_task_seed) for task in TASKS
    }
    settings = ClassificationSettings(
        model=mt.name,
        random_init=random_init,
        editor_type=editor.config.editor_type,
        editor_layer=editor.layer,
        entity_layer=entity_layer,
        entity_token=entity_token,
        normalize=normalize,
        control_task=control_task,
        control_task_seed=control_task_seed,
        samples=len(rows),
    )
    return ClassificationResults(
        settings=settings,
        metrics=ClassifierMetrics(**task_results),
        samples=[
            ClassificationSample(str(row["id"]), contextual, decontextual)
            for row, contextual, decontextual in zip(
                rows, outputs["contextual"], outputs["decontextual"], strict=True
            )
        ],
    )


def identity_editor(mt: models.ModelAndTokenizer, like: editors.Editor) -> editors.Editor:
    """REMEDI (I): the identity editor at ``like``'s layer, reading the attribute as it does."""
    return editors.new_editor(
        "identity",
        mt,
        like.layer,
        input_last_entity_token=like.config.input_last_entity_token,
        edit_last_entity_token=like.config.edit_last_entity_token,
        input_last_attribute_token=like.config.input_last_attribute_token,
    )


# ---------------------------------------------------------------------------------------------
# The paper's table: rows, result files, the table.

ROWS = {
    "remedi": "REMEDI",
    "remedi_identity": "REMEDI (I)",
    "control_task": "Control Task",
    "control_model": "Control Model",
}
"""The rows of the paper's classification table, by result directory name."""


def task_names(dataset: str) -> dict[str, str]:
    """Display names of the two tasks: Fact-Med/Fact-Prior on CounterFact, else <Name>-Med/-Prior."""
    if dataset.startswith("counterfact"):
        return dict(TASK_NAMES)
    name = {"biosbias": "Bios"}.get(dataset, dataset.capitalize())
    return {"contextual": f"{name}-Med", "decontextual": f"{name}-Prior"}


def result_file(directory: Path, row: str, entity_layer: int) -> Path:
    """``<directory>/<row>/cls_entity_layer_<L>.json``."""
    return Path(directory) / row / f"cls_entity_layer_{entity_layer}.json"


def read_result(path: Path) -> ClassificationResults | None:
    """The classification result stored at ``path``, or None if there is none or it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return ClassificationResults.from_dict(io.read_json(path, "classification result"))
    except (errors.RemediError, KeyError, TypeError, ValueError) as error:
        logger.warning("ignoring unreadable result %s (%s); it will be recomputed", path, error)
        return None


def write_result(path: Path, result: ClassificationResults) -> None:
    io.write_json(Path(path), result.to_dict(), indent=None)


def classification_table(
    results: Mapping[str, ClassificationResults], dataset: str, title: str = ""
) -> tables.Table:
    """F1 and MCC of each task, one row per entry of ``results`` (keys from :data:`ROWS`)."""
    names = task_names(dataset)
    columns = {}
    for task in TASKS:
        columns[f"{task}.f1"] = f"{names[task]} F1"
        columns[f"{task}.mcc"] = f"{names[task]} MCC"
    rows = []
    for key, result in results.items():
        values: dict[str, float | None] = {}
        for task in TASKS:
            task_result: ClassifierTaskMetrics = getattr(result.metrics, task)
            values[f"{task}.f1"] = task_result.f1
            values[f"{task}.mcc"] = task_result.mcc
        rows.append(tables.TableRow(ROWS.get(key, key), values))
    notes = []
    if results:
        first = next(iter(results.values())).settings
        notes.append(
            f"{first.samples} samples; editor layer {first.editor_layer}, entity layer "
            f"{first.entity_layer} ({first.entity_token} token); {names['contextual']}: does "
            f"the LM fail to follow the context's value, {names['decontextual']}: does it fail "
            "to keep its prior (the positive classes of F1); labels from the unedited LM's "
            "first-token log-probs, predictions from standardised dot products of REMEDI "
            "directions with the entity's state."
        )
        for key, result in results.items():
            rates = result.metrics
            notes.append(
                f"{ROWS.get(key, key)}: model {result.settings.model}"
                f"{' (random init)' if result.settings.random_init else ''}, LM mediation rate "
                f"in context {rates.contextual.label_rate:.2f}, prior kept out of context "
                f"{rates.decontextual.label_rate:.2f}"
                + (
                    f", labels shuffled (seed {result.settings.control_task_seed})"
                    if result.settings.control_task
                    else ""
                )
                + "; F1 of calling every sample a failure: "
                + ", ".join(
                    f"{names[task]} "
                    f"{metrics.constant_positive_f1(1 - getattr(rates, task).label_rate):.2f}"
                    for task in TASKS
                )
            )
    return tables.Table(title=title, columns=columns, rows=rows, notes=notes)
