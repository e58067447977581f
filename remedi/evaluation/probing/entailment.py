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

Two choices follow the reference (evandez/REMEDI) by default, each with an option:

- A text method (Prefix) rewrites the co-occurring and original features' texts only, not the
  unrelated ones (the reference's ``scripts/eval_entailment.py:21``), so Prefix's unrelated Δp
  is 0 by construction. ``rewrite_unrelated=True`` (``--rewrite-unrelated``) rewrites them too
  and measures how the context moves features it does not imply.
- The norms' probabilities are compared with :data:`NORM_DIGITS` (2) decimals: the reference
  writes them so into its dataset (``remedi/data.py:769,781``) and drops the features whose
  written value is 0 (``remedi/benchmarks.py:1582,1594``; co-occurrences under 0.005, about one
  of the ~19 co-occurring features of a real McRae sample). ``norm_digits=None``
  (``--exact-norms``) keeps the exact values, so that the correlation is with the log of the
  norms themselves rather than of their rounding (0.006 and 0.014 both become log 0.01).
  The loader (:mod:`remedi.data.mcrae`) keeps exact values; the rounding happens here.
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
NORM_DIGITS = 2
"""Decimals of the norms' probabilities, as the reference's dataset writes them (see the module
doc); a feature whose rounded value is 0 is left out."""
REWRITTEN_KINDS = ("co", "orig")
"""The groups whose texts a text method rewrites by default (the reference's Prefix)."""


@dataclass
class EntailmentSettings(DataClassJsonMixin):
    norm_digits: int | None = NORM_DIGITS
    """Decimals of the norms' probabilities (None: exact)."""
    rewrite_unrelated: bool = False
    """A text method also rewrote the unrelated features' texts."""


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
    settings: EntailmentSettings | None = None
    """None in files written before the settings were recorded (exact norms, every group
    rewritten)."""


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


def norm_probability(value: Any, digits: int | None = NORM_DIGITS) -> float:
    """A norm's probability as compared: rounded to ``digits`` decimals (None: exact)."""
    probability = float(value)
    return probability if digits is None else round(probability, digits)


def entailment(
    mt: models.ModelAndTokenizer,
    samples: Sequence[Mapping[str, Any]],
    method: str = "remedi",
    editor: editors.Editor | RemediEdit | None = None,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    settings: EntailmentSettings | None = None,
) -> EntailmentResults:
    """Score every sample's feature groups before and after registered method ``method`` (see
    module doc): a text method rewrites the co-occurring and original features' texts with the
    sample's context (the unrelated ones too with ``settings.rewrite_unrelated``); ``remedi``
    adds ``editor``'s directions (an editor, or REMEDI prepared by the registry) to every
    group. ``settings``: default :class:`EntailmentSettings`, the reference's.

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
    settings = EntailmentSettings() if settings is None else settings
    rewritten_kinds = set(KINDS) if settings.rewrite_unrelated else set(REWRITTEN_KINDS)
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
                if item["kind"] in rewritten_kinds
                else text
                for text, entity, item in zip(texts, entities, batch, strict=True)
            ]
            # Texts left as they were keep their score: their Δp is exactly 0.
            changed = [i for i, text in enumerate(texts) if rewritten[i] != text]
            after = before.clone()
            if changed:
                after[changed] = target_log_probs(
                    mt, [rewritten[i] for i in changed], [targets[i] for i in changed]
                )
            post.append(after)
        else:
            assert directions is not None and edit is not None
            index = torch.tensor([item["index"] for item in batch])
            post.append(target_log_probs(mt, texts, targets, entities, edit, directions[index]))
    logp_pre, logp_post = torch.cat(pre).tolist(), torch.cat(post).tolist()

    grouped: list[dict[str, list[EntailmentFeature]]] = [{kind: [] for kind in KINDS} for _ in rows]
    for item, before, after in zip(flat, logp_pre, logp_post, strict=True):
        raw = item.get(REFERENCE_KEYS.get(item["kind"], ""))
        reference = None if raw is None else norm_probability(raw, settings.norm_digits)
        if reference is not None and reference <= 0:
            continue  # the reference keeps only features with a positive (rounded) norm
        grouped[item["index"]][item["kind"]].append(
            EntailmentFeature(
                feature=item["feature_fluent"],
                logp_pre=before,
                logp_post=after,
                logp_ref=None if reference is None else math.log(reference),
            )
        )
    results = [
        EntailmentSample(str(row["id"]), features)
        for row, features in zip(rows, grouped, strict=True)
    ]
    return EntailmentResults(method, mt.name, entailment_metrics(results), results, settings)


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
    first = next(iter(results.values())) if results else None
    samples = len(first.samples) if first is not None else 0
    notes = [
        f"{samples} samples. Δp: mean change of the probability of the feature's target "
        "(whole target) after the edit; r: mean over samples of the Pearson correlation of the "
        "after-edit log-probabilities with the log co-occurrence (co-occurring) or log "
        "p(feature | concept) (original) of the McRae norms."
    ]
    settings = first.settings if first is not None else None
    if settings is not None:
        digits = settings.norm_digits
        as_reference = " (as the reference)" if digits == NORM_DIGITS else ""
        norms = (
            "Exact norms."
            if digits is None
            else f"Norms rounded to {digits} decimals, zeros left out{as_reference}."
        )
        prefix = (
            "Prefix also puts the context before the unrelated features."
            if settings.rewrite_unrelated
            else "Prefix puts the context before co-occurring and original features only (as "
            "the reference), so its unrelated Δp is 0 by construction."
        )
        notes.append(f"{norms} {prefix}")
    return tables.Table(title=title, columns=columns, rows=rows, notes=notes, digits=3)
