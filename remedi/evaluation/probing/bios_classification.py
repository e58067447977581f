"""Bias in Bios error classification (Bios-Med): do REMEDI's directions predict the LM's errors?

The Bias in Bios half of REMEDI as a probe, following the reference
(``benchmarks.biosbias_error_classification``, ``scripts/eval_bias_cls.py``):

- **Labels** come from the unedited LM. Every occupation of the evaluated samples is a label
  (sorted); the LM reads the bio's sentence then the prompt (the same ``"<context>. <prompt>"``
  as fact mediation) and its prediction is the label whose first token (``" " + label``) is
  most likely next. The LM *errs* when that is not the person's occupation.
- **Predictions** come from the editor. For each sample and each label, a direction: for the
  person's own occupation, from the sample's own attribute; for every other label, from the
  attribute ``"has the occupation of <label>"``. Every context, the own occupation's included,
  is ``"<entity> <attribute>"``, not the bio's sentence, so that all labels' directions come
  from text of one form (as the reference: evandez/REMEDI ``remedi/benchmarks.py:1156-1162``). Each
  direction is compared (dot product) with the entity's hidden state at the *entity layer*
  (its last mention's last token, in the same prompt in context); entity states and
  directions are standardised per dimension over the evaluated samples (all directions
  together), as in the reference. The probe predicts an error when the LM's top label is not
  among the probe's top-k (k = 3) labels.
- **Metrics**: F1 of the positive class "the LM errs" and MCC (and accuracy, the probe's and
  the LM's recall of the true occupation at 1 and k). Control task: the labels shuffled with a
  seed, same predictions.

Differences from the reference: a dimension with zero variance is only centred (no NaN);
editors that read the entity are given it as they were trained (see
:mod:`remedi.evaluation.probing.classification`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import editors, errors, hooks, io, metrics, models, precompute
from remedi.evaluation.probing.classification import (
    DEFAULT_CONTROL_TASK_SEED,
    ROWS,
    control_labels,
    standardize,
)
from remedi.evaluation.probing.mediation import prompt_in_context, sample_rows
from remedi.report import tables

logger = logging.getLogger(__name__)

TOP_K_LABELS = 3
"""The probe predicts no error when the LM's top label is among its top k (the reference's k)."""
OTHER_LABEL_ATTRIBUTE = "has the occupation of {}"
"""The attribute whose direction stands for a label other than the person's occupation."""
TASK_NAME = "Bios-Med"


def bios_rows(samples: precompute.Samples) -> list[dict[str, Any]]:
    """Samples as dicts, checked for the fields this benchmark reads.

    Raises:
        SampleError: A sample lacks one of ``id, entity, prompt, context, attribute,
            target_mediated``.
    """
    return sample_rows(
        samples,
        ("id", "entity", "prompt", "context", "attribute", "target_mediated"),
        "Bias in Bios classification needs samples from remedi.data.load_biosbias",
    )


def label_attributes(row: Mapping[str, Any], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One editor input per label: the sample's attribute for its own occupation, else
    ``"has the occupation of <label>"``; each with context ``"<entity> <attribute>"``, the own
    occupation's too (not the bio's sentence: the reference's ``benchmarks.py:1162``)."""
    inputs = []
    for index, label in enumerate(labels):
        own = label == row["target_mediated"]
        attribute = row["attribute"] if own else OTHER_LABEL_ATTRIBUTE.format(label)
        inputs.append(
            {
                "id": f"{row['id']}/label_{index}",
                "entity": row["entity"],
                "prompt": row["prompt"],
                "context": f"{row['entity']} {attribute}",
                "attribute": attribute,
            }
        )
    return inputs


@dataclass
class LabelReadings:
    """The LM on each prompt in context: entity states per layer (n, hidden) and the labels'
    first-token log-probs (n, labels), float32 on the CPU."""

    entity_last: dict[int, torch.Tensor]
    logp_labels: torch.Tensor


@torch.no_grad()
def read_label_prompts(
    mt: models.ModelAndTokenizer,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    layers: Sequence[int],
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
) -> LabelReadings:
    """Run the LM on each sample's prompt in context; read the entity and the labels."""
    layers = sorted(set(layers))
    models.determine_layer_paths(mt.model, layers)
    device = models.determine_device(mt.model)
    label_ids = precompute.target_token_ids(mt.tokenizer, labels)
    prompts = [prompt_in_context(row["context"], row["prompt"]) for row in rows]
    states: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    logps = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="read prompts in context", disable=len(starts) < 2):
        texts = prompts[start : start + batch_size]
        batch = rows[start : start + batch_size]
        names = [str(row["id"]) for row in batch]
        inputs, offsets = precompute.tokenize(mt.tokenizer, texts, device, "right")
        mask = inputs.attention_mask.cpu()
        spans = precompute.find_char_spans(texts, [row["entity"] for row in batch], names)
        ends = precompute.token_ranges_from_char_spans(spans, offsets, mask, names)[:, 1] - 1
        with hooks.record_hiddens(mt.model, layers) as recorded:
            logits = mt.model(**inputs).logits
        index = torch.arange(len(texts))
        final = logits[
            index.to(logits.device), precompute.last_token_positions(mask).to(logits.device)
        ]
        # At least float32: half-precision log-softmax loses the small differences compared.
        final = final.to(torch.promote_types(final.dtype, torch.float32))
        logps.append(torch.log_softmax(final, dim=-1)[:, label_ids.to(final.device)].float().cpu())
        for layer in layers:
            hidden = recorded[layer]
            states[layer].append(
                hidden[index.to(hidden.device), ends.to(hidden.device)].float().cpu()
            )
    return LabelReadings(
        entity_last={layer: torch.cat(parts) for layer, parts in states.items()},
        logp_labels=torch.cat(logps),
    )


@dataclass
class BiosClassificationSample(DataClassJsonMixin):
    id: str
    target: str
    model_top_k: list[str]
    model_top_k_logp: list[float]
    probe_top_k: list[str]
    probe_top_k_scores: list[float]

    @property
    def label(self) -> bool:
        """The LM errs: its top label is not the person's occupation."""
        return self.model_top_k[0] != self.target

    @property
    def prediction(self) -> bool:
        """The probe predicts an error: the LM's top label is not among the probe's top k."""
        return self.model_top_k[0] not in self.probe_top_k


@dataclass
class BiosClassificationMetrics(DataClassJsonMixin):
    f1: float
    mcc: float
    accuracy: float
    label_rate: float
    """Share of samples where the (unshuffled) label is true: the LM's error rate."""
    probe_recall_1: float
    probe_recall_k: float
    model_recall_1: float
    model_recall_k: float
    k: int


@dataclass
class BiosClassificationSettings(DataClassJsonMixin):
    model: str
    random_init: bool
    editor_type: str
    editor_layer: int
    entity_layer: int
    normalize: bool
    control_task: bool
    control_task_seed: int
    samples: int
    labels: list[str]


@dataclass
class BiosClassificationResults(DataClassJsonMixin):
    settings: BiosClassificationSettings
    metrics: BiosClassificationMetrics
    samples: list[BiosClassificationSample] = field(default_factory=list)


def bios_metrics(
    samples: Sequence[BiosClassificationSample],
    k: int = TOP_K_LABELS,
    control_task: bool = False,
    control_task_seed: int = DEFAULT_CONTROL_TASK_SEED,
) -> BiosClassificationMetrics:
    """F1/MCC of predicting the LM's errors (see the module doc), and the recalls."""
    labels = [sample.label for sample in samples]
    label_rate = metrics.share(labels)
    predictions = [sample.prediction for sample in samples]
    if control_task:
        labels = control_labels(labels, control_task_seed)
    return BiosClassificationMetrics(
        f1=metrics.f1_score(labels, predictions),
        mcc=metrics.matthews_corrcoef(labels, predictions),
        accuracy=metrics.accuracy(labels, predictions),
        label_rate=label_rate,
        probe_recall_1=metrics.share([s.probe_top_k[0] == s.target for s in samples]),
        probe_recall_k=metrics.share([s.target in s.probe_top_k[:k] for s in samples]),
        model_recall_1=metrics.share([s.model_top_k[0] == s.target for s in samples]),
        model_recall_k=metrics.share([s.target in s.model_top_k[:k] for s in samples]),
        k=k,
    )


@torch.no_grad()
def bios_classification(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    samples: precompute.Samples,
    entity_layer: int | None = None,
    labels: Sequence[str] | None = None,
    top_k: int = TOP_K_LABELS,
    normalize: bool = True,
    control_task: bool = False,
    control_task_seed: int = DEFAULT_CONTROL_TASK_SEED,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    random_init: bool = False,
    readings: LabelReadings | None = None,
) -> BiosClassificationResults:
    """Classify, with ``editor``'s directions, whether the LM gets each person's occupation wrong.

    Args:
        mt: The LM (the one the editor was trained on).
        editor: The editor whose directions probe the entity.
        samples: Bias in Bios samples (:func:`remedi.data.load_biosbias` rows).
        entity_layer: Layer of the entity's state (default: the editor's layer).
        labels: The occupations compared (default: those of ``samples``, sorted).
        top_k: The probe's k.
        normalize: Standardise states and directions before the dot product (the reference's).
        control_task: Score against seeded shuffled labels instead.
        control_task_seed: Seed of the shuffle.
        batch_size: Samples per forward pass.
        random_init: Recorded in the settings: ``mt`` is the randomly initialised control.
        readings: :func:`read_label_prompts` of ``samples`` and ``labels`` at ``entity_layer``,
            to share one LM pass between rows of the table.
    """
    rows = bios_rows(samples)
    if len(rows) < 2:
        raise errors.UsageError("classification needs at least 2 samples (it standardises)")
    labels = sorted({row["target_mediated"] for row in rows}) if labels is None else list(labels)
    missing = {row["target_mediated"] for row in rows} - set(labels)
    if missing:
        raise errors.UsageError(f"occupations {sorted(missing)} are not among the labels")
    k = min(top_k, len(labels))
    entity_layer = editor.layer if entity_layer is None else entity_layer
    if readings is None:
        readings = read_label_prompts(mt, rows, labels, [entity_layer], batch_size)
    entities = readings.entity_last[entity_layer]
    inputs = [entry for row in rows for entry in label_attributes(row, labels)]
    directions = editors.editor_directions(mt, editor, inputs, batch_size).cpu()
    if normalize:
        entities, directions = standardize(entities), standardize(directions)
    directions = directions.double().view(len(rows), len(labels), -1)
    scores = torch.einsum("nh,nlh->nl", entities.double(), directions)
    probe_scores, probe_index = scores.topk(k, dim=-1)
    model_logp, model_index = readings.logp_labels.topk(k, dim=-1)
    results = [
        BiosClassificationSample(
            id=str(row["id"]),
            target=row["target_mediated"],
            model_top_k=[labels[i] for i in model_ids],
            model_top_k_logp=model_values,
            probe_top_k=[labels[i] for i in probe_ids],
            probe_top_k_scores=probe_values,
        )
        for row, model_ids, model_values, probe_ids, probe_values in zip(
            rows,
            model_index.tolist(),
            model_logp.tolist(),
            probe_index.tolist(),
            probe_scores.tolist(),
            strict=True,
        )
    ]
    settings = BiosClassificationSettings(
        model=mt.name,
        random_init=random_init,
        editor_type=editor.config.editor_type,
        editor_layer=editor.layer,
        entity_layer=entity_layer,
        normalize=normalize,
        control_task=control_task,
        control_task_seed=control_task_seed,
        samples=len(rows),
        labels=labels,
    )
    return BiosClassificationResults(
        settings, bios_metrics(results, k, control_task, control_task_seed), results
    )


def result_file(directory: Path, row: str, entity_layer: int) -> Path:
    """``<directory>/<row>/bios_cls_entity_layer_<L>.json``."""
    return Path(directory) / row / f"bios_cls_entity_layer_{entity_layer}.json"


def read_result(path: Path) -> BiosClassificationResults | None:
    """The result stored at ``path``, or None if there is none or it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return BiosClassificationResults.from_dict(io.read_json(path, "classification result"))
    except (errors.RemediError, KeyError, TypeError, ValueError) as error:
        logger.warning("ignoring unreadable result %s (%s); it will be recomputed", path, error)
        return None


def write_result(path: Path, result: BiosClassificationResults) -> None:
    io.write_json(Path(path), result.to_dict(), indent=None)


def bios_table(results: Mapping[str, BiosClassificationResults], title: str = "") -> tables.Table:
    """Bios-Med F1 and MCC, one row per entry of ``results`` (keys from ``ROWS``)."""
    columns = {"f1": f"{TASK_NAME} F1", "mcc": f"{TASK_NAME} MCC"}
    rows = [
        tables.TableRow(ROWS.get(key, key), {"f1": result.metrics.f1, "mcc": result.metrics.mcc})
        for key, result in results.items()
    ]
    notes = []
    if results:
        first = next(iter(results.values())).settings
        notes.append(
            f"{first.samples} samples, {len(first.labels)} occupations; editor layer "
            f"{first.editor_layer}, entity layer {first.entity_layer} (last token, prompt in "
            f"context); positive class: the LM's top occupation is wrong; predicted when the LM's "
            f"top occupation is not among the probe's top {TOP_K_LABELS}."
        )
        for key, result in results.items():
            notes.append(
                f"{ROWS.get(key, key)}: model {result.settings.model}"
                f"{' (random init)' if result.settings.random_init else ''}, LM error rate "
                f"{result.metrics.label_rate:.2f}, probe recall@1 "
                f"{result.metrics.probe_recall_1:.2f}"
                + (
                    f", labels shuffled (seed {result.settings.control_task_seed})"
                    if result.settings.control_task
                    else ""
                )
                + "; F1 of calling every sample an error: "
                f"{metrics.constant_positive_f1(result.metrics.label_rate):.2f}"
            )
    return tables.Table(title=title, columns=columns, rows=rows, notes=notes)
