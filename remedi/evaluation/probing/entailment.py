"""Entailment on the McRae norms: does an edit also move the features the new fact implies?

Each McRae sample (:mod:`remedi.data.mcrae`) gives an entity a feature it lacks ("An apple has
strings."). As in the REMEDI reference (``benchmarks.mcrae_entailment``), the LM scores three
groups of the entity's features, each as the whole-target log-probability of
``"<prompt> <target>"`` ("An apple is a" + "musical instrument"), before and after the edit:

- **co-occurring** features of the context's feature (entailed: p(g | f) >= 0 in the norms),
  correlated with their log co-occurrence;
- the concept's **original** features, correlated with their log p(feature | concept);
- **unrelated** features (neither), which should not move.

Rows: registered methods (:mod:`remedi.methods.registry`) that rewrite text or edit hidden
states, as the paper: *Unedited* (the LM alone: its correlations, no change), *Prefix* (the
context sentence before the text) and *REMEDI* (the editor's direction added at the entity). Columns: the mean
change of probability of each group and the mean over samples of the Pearson correlation of
the after-edit log-probabilities with the norms (samples with fewer than two features in a
group, or constant values, have no correlation and are left out of its mean).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import editors, errors, models, precompute
from remedi.methods import baselines, registry
from remedi.methods.remedi import RemediEdit
from remedi.report import tables

logger = logging.getLogger(__name__)

KINDS = {"co": "co_features", "orig": "original_features", "unrel": "unrelated_features"}
"""Feature group -> the sample field that lists it."""
REFERENCE_KEYS = {"co": "co_prob", "orig": "prob"}


@dataclass
class EntailmentFeature(DataClassJsonMixin):
    feature: str
    logp_pre: float
    logp_post: float
    logp_ref: float | None


@dataclass
class EntailmentSample(DataClassJsonMixin):
    id: str
    features: dict[str, list[EntailmentFeature]]
    """Group ("co", "orig", "unrel") -> its features."""


@dataclass
class EntailmentMetrics(DataClassJsonMixin):
    delta_p: dict[str, float]
    """Group -> mean over samples of the mean change of probability."""
    correlation: dict[str, float]
    """Group ("co", "orig") -> mean over samples of Pearson r(log p after, log p in the norms)."""
    correlated_samples: dict[str, int]


@dataclass
class EntailmentResults(DataClassJsonMixin):
    method: str
    model: str
    metrics: EntailmentMetrics
    samples: list[EntailmentSample] = field(default_factory=list)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    if len(x) < 2:
        return math.nan
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.std(xs) == 0 or np.std(ys) == 0:
        return math.nan
    return float(np.corrcoef(xs, ys)[0, 1])


@torch.no_grad()
def target_log_probs(
    mt: models.ModelAndTokenizer,
    texts: Sequence[str],
    targets: Sequence[str],
    entities: Sequence[str] | None = None,
    edit: RemediEdit | None = None,
    directions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of log-probs of each target's tokens at the end of its text (n,), float32.

    With ``edit`` and ``directions``, the direction of row i is added (times ``edit.alpha``) at
    the last mention of ``entities[i]`` in ``texts[i]`` (see :func:`remedi.editors.apply_editor`).
    """
    device = models.determine_device(mt.model)
    inputs, offsets = precompute.tokenize(mt.tokenizer, texts, device, "right")
    spans = precompute.find_char_spans(texts, targets)
    ranges = precompute.token_ranges_from_char_spans(spans, offsets, inputs.attention_mask.cpu())
    if edit is not None and directions is not None and entities is not None:
        with editors.apply_editor(
            mt, edit.editor, directions, texts, entities, edit.alpha, padding_side="right"
        ) as edited_inputs:
            logits = mt.model(**edited_inputs).logits
    else:
        logits = mt.model(**inputs).logits
    logps = torch.log_softmax(logits.float(), dim=-1)
    # The token at position t is predicted at t - 1.
    predicted = logps[:, :-1].gather(-1, inputs.input_ids[:, 1:, None]).squeeze(-1)
    positions = torch.arange(1, inputs.input_ids.shape[1], device=predicted.device)
    starts, ends = ranges[:, :1].to(predicted.device), ranges[:, 1:].to(predicted.device)
    mask = (positions >= starts.clamp(min=1)) & (positions < ends)
    return (predicted * mask).sum(dim=-1).cpu()


def _flatten(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for index, row in enumerate(rows):
        for kind, key in KINDS.items():
            if key not in row:
                raise errors.SampleError(
                    f"sample {row.get('id', index)}: no {key!r}; the entailment benchmark needs "
                    "McRae samples (remedi.data.load_dataset('mcrae'))"
                )
            for feature in row[key]:
                flat.append({"index": index, "kind": kind, **feature})
    return flat


def entailment(
    mt: models.ModelAndTokenizer,
    samples: Sequence[Mapping[str, Any]],
    method: str = "remedi",
    editor: editors.Editor | RemediEdit | None = None,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
) -> EntailmentResults:
    """Score every sample's feature groups before and after registered method ``method`` (see
    module doc): a text method rewrites each text with the sample's context; ``remedi`` adds
    ``editor``'s directions (an editor, or REMEDI prepared by the registry).

    Raises:
        errors.UsageError: A method this suite cannot run, or remedi without an editor.
    """
    spec = registry.method_spec(method)
    if spec.needs_replacement or spec.edits == "weights":
        usable = [
            name
            for name, entry in registry.METHODS.items()
            if entry.edits == "hidden_states"
            or (entry.edits == "text" and not entry.needs_replacement)
        ]
        raise errors.UsageError(
            f"the entailment benchmark cannot run method {method!r}; use one of {', '.join(usable)}"
        )
    edit = (
        RemediEdit(editor, batch_size=batch_size) if isinstance(editor, editors.Editor) else editor
    )
    if spec.edits == "hidden_states" and edit is None:
        raise errors.UsageError(f"the {method} method needs a trained editor")
    rows = [dict(row) for row in samples]
    flat = _flatten(rows)
    directions = None
    if spec.edits == "hidden_states" and edit is not None:
        directions = edit.directions(mt, rows).cpu()
    pre, post = [], []
    starts = range(0, len(flat), batch_size)
    for start in tqdm(starts, desc=f"entailment [{method}]", disable=len(starts) < 2):
        batch = flat[start : start + batch_size]
        texts = [f"{item['prompt']} {item['target']}" for item in batch]
        targets = [item["target"] for item in batch]
        entities = [rows[item["index"]]["entity"] for item in batch]
        before = target_log_probs(mt, texts, targets)
        pre.append(before)
        if spec.rewrite is not None:
            rewritten = [
                spec.rewrite(text, baselines.TextEdit(entity, rows[item["index"]]["context"]))
                for text, entity, item in zip(texts, entities, batch, strict=True)
            ]
            same = rewritten == texts
            post.append(before if same else target_log_probs(mt, rewritten, targets))
        else:
            assert directions is not None and edit is not None
            index = torch.tensor([item["index"] for item in batch])
            post.append(target_log_probs(mt, texts, targets, entities, edit, directions[index]))
    logp_pre, logp_post = torch.cat(pre).tolist(), torch.cat(post).tolist()

    grouped: list[dict[str, list[EntailmentFeature]]] = [{kind: [] for kind in KINDS} for _ in rows]
    for item, before, after in zip(flat, logp_pre, logp_post, strict=True):
        reference = item.get(REFERENCE_KEYS.get(item["kind"], ""))
        if reference is not None and float(reference) <= 0:
            continue  # the reference keeps only features with a positive norm
        grouped[item["index"]][item["kind"]].append(
            EntailmentFeature(
                feature=item["feature_fluent"],
                logp_pre=before,
                logp_post=after,
                logp_ref=None if reference is None else math.log(float(reference)),
            )
        )
    results = [
        EntailmentSample(str(row["id"]), features)
        for row, features in zip(rows, grouped, strict=True)
    ]
    return EntailmentResults(method, mt.name, entailment_metrics(results), results)


def entailment_metrics(samples: Sequence[EntailmentSample]) -> EntailmentMetrics:
    """Mean change of probability per group; mean correlation with the norms (co, orig)."""
    delta_p, correlation, counts = {}, {}, {}
    for kind in KINDS:
        deltas = [
            float(np.mean([math.exp(f.logp_post) - math.exp(f.logp_pre) for f in features]))
            for sample in samples
            if (features := sample.features[kind])
        ]
        delta_p[kind] = float(np.mean(deltas)) if deltas else math.nan
        if kind in REFERENCE_KEYS:
            values = [
                pearson(
                    [f.logp_post for f in sample.features[kind]],
                    [f.logp_ref or 0.0 for f in sample.features[kind]],
                )
                for sample in samples
            ]
            finite = [value for value in values if not math.isnan(value)]
            correlation[kind] = float(np.mean(finite)) if finite else math.nan
            counts[kind] = len(finite)
    return EntailmentMetrics(delta_p=delta_p, correlation=correlation, correlated_samples=counts)


def entailment_table(results: Mapping[str, EntailmentResults], title: str = "") -> tables.Table:
    """One row per method (its registered label); columns Δp and correlation of each group."""
    columns = {
        "co.delta_p": "Co-occurring Δp",
        "co.r": "Co-occurring r",
        "orig.delta_p": "Original Δp",
        "orig.r": "Original r",
        "unrel.delta_p": "Unrelated Δp",
    }
    rows = []
    for method, result in results.items():
        metrics = result.metrics
        rows.append(
            tables.TableRow(
                registry.METHODS[method].label if method in registry.METHODS else method,
                {
                    "co.delta_p": metrics.delta_p.get("co"),
                    "co.r": metrics.correlation.get("co"),
                    "orig.delta_p": metrics.delta_p.get("orig"),
                    "orig.r": metrics.correlation.get("orig"),
                    "unrel.delta_p": metrics.delta_p.get("unrel"),
                },
            )
        )
    samples = len(next(iter(results.values())).samples) if results else 0
    notes = [
        f"{samples} samples. Δp: mean change of the probability of the feature's target "
        "(whole target) after the edit; r: mean over samples of the Pearson correlation of the "
        "after-edit log-probabilities with the log co-occurrence (co-occurring) or log "
        "p(feature | concept) (original) of the McRae norms."
    ]
    return tables.Table(title=title, columns=columns, rows=rows, notes=notes, digits=3)
