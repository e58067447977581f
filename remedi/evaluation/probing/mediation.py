"""Fact mediation: how often the unedited LM follows a fact in context, and keeps it out of one.

For each sample (see :mod:`remedi.data`) the LM reads two prompts, as in the REMEDI reference
(``benchmarks.mediation``, ``scripts/eval_fact_mediation.py``):

- **decontextual**: the prompt alone ("Danielle Darrieux, a native"); the LM *keeps its prior*
  when the first token of ``target_unmediated`` is more likely than that of ``target_mediated``;
- **contextual**: the prompt after the context ("The mother tongue of Danielle Darrieux is
  English. Danielle Darrieux, a native"); the LM *mediates* the context when the first token of
  ``target_mediated`` is more likely than that of ``target_unmediated``.

Each task's accuracy is the share of samples where the LM does so. The same reading (the
entity's hidden states and the two targets' log-probabilities on both prompts) gives the labels
of the classification benchmark (:mod:`remedi.evaluation.probing.classification`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import errors, hooks, metrics, models, precompute

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
"""Top next tokens recorded per prompt (the reference's ``DEFAULT_N_TOP_TOKENS``)."""

TASKS = ("contextual", "decontextual")


def prompt_in_context(context: str, prompt: str) -> str:
    """The context as a full sentence, then the prompt: ``"<context>. <prompt>"``.

    As the reference's ``prompt_in_context_from_sample`` without prefixes: trailing periods and
    spaces of the context are replaced by one period and a space.
    """
    return context.rstrip(". ") + ". " + prompt


MEDIATION_FIELDS = ("id", "entity", "prompt", "context", "target_mediated", "target_unmediated")


def sample_rows(
    samples: precompute.Samples,
    fields: Sequence[str] = MEDIATION_FIELDS,
    needs: str = "mediation and classification need both targets (CounterFact-style samples, "
    "see remedi.data)",
) -> list[dict[str, Any]]:
    """Samples (a ``datasets.Dataset`` or dicts) as a list of dicts, each with every one of
    ``fields`` (by default both targets: these benchmarks compare the two).

    Raises:
        SampleError: A sample lacks one of ``fields``; the message ends with ``needs``.
    """
    rows = [dict(row) for row in samples]
    for row in rows:
        for key in fields:
            if not row.get(key):
                raise errors.SampleError(f"sample {row.get('id', '?')}: no {key!r}; {needs}")
    return rows


@dataclass
class PromptReadings:
    """What the LM does on a batch of prompts, float32 on the CPU.

    ``entity_last[layer]``/``entity_average[layer]``: the entity's (last mention's) last-token
    or mean hidden state (n, hidden); ``logp_mediated``/``logp_unmediated``: log-probability of
    each target's first token as the next token (n,); ``top_tokens``: the top next tokens.
    """

    entity_last: dict[int, torch.Tensor]
    entity_average: dict[int, torch.Tensor]
    logp_mediated: torch.Tensor
    logp_unmediated: torch.Tensor
    top_tokens: list[list[str]]

    def entity(self, layer: int, token: str = "last") -> torch.Tensor:
        """The entity's state at ``layer``: its "last" token's or the "average" of its tokens."""
        if token not in ("last", "average"):
            raise errors.UsageError(f"entity token must be 'last' or 'average', got {token!r}")
        return (self.entity_last if token == "last" else self.entity_average)[layer]


@torch.no_grad()
def read_prompts(
    mt: models.ModelAndTokenizer,
    rows: Sequence[Mapping[str, Any]],
    prompts: Sequence[str],
    layers: Sequence[int] = (),
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
    desc: str = "read prompts",
) -> PromptReadings:
    """Run the LM on ``prompts`` (one per row) and read the entity's states and the targets.

    One forward pass per batch records every layer in ``layers`` and the next-token
    distribution at each prompt's last token.
    """
    if len(rows) != len(prompts):
        raise ValueError(f"got {len(rows)} samples but {len(prompts)} prompts")
    layers = sorted(set(layers))
    models.determine_layer_paths(mt.model, layers)
    device = models.determine_device(mt.model)
    mediated_ids = precompute.target_token_ids(mt.tokenizer, [r["target_mediated"] for r in rows])
    unmediated_ids = precompute.target_token_ids(
        mt.tokenizer, [r["target_unmediated"] for r in rows]
    )
    last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    average: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    logps, top_ids = [], []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 2):
        batch = slice(start, start + batch_size)
        texts = list(prompts[batch])
        names = [str(row["id"]) for row in rows[batch]]
        inputs, offsets = precompute.tokenize(mt.tokenizer, texts, device, "right")
        mask = inputs.attention_mask.cpu()
        spans = precompute.find_char_spans(texts, [row["entity"] for row in rows[batch]], names)
        ranges = precompute.token_ranges_from_char_spans(spans, offsets, mask, names)
        with hooks.record_hiddens(mt.model, layers) as recorded:
            logits = mt.model(**inputs).logits
        rows_index = torch.arange(len(texts))
        final = precompute.last_token_positions(mask)
        last_logits = logits[rows_index, final.to(logits.device)]
        # At least float32 (half-precision log-softmax loses the small differences we compare).
        last_logits = last_logits.to(torch.promote_types(last_logits.dtype, torch.float32))
        distribution = torch.log_softmax(last_logits, dim=-1)
        logps.append(distribution.cpu())
        top_ids.append(distribution.topk(min(top_k, distribution.shape[-1]), dim=-1).indices.cpu())
        for layer in layers:
            states = recorded[layer].float()
            ends = ranges[:, 1].to(states.device) - 1
            last[layer].append(states[rows_index.to(states.device), ends].cpu())
            average[layer].append(precompute.average_in_ranges(states, ranges).cpu())
    distribution = torch.cat(logps)
    index = torch.arange(len(rows))
    tokens = [
        [str(mt.tokenizer.decode([token])) for token in ids] for ids in torch.cat(top_ids).tolist()
    ]
    return PromptReadings(
        entity_last={layer: torch.cat(parts) for layer, parts in last.items()},
        entity_average={layer: torch.cat(parts) for layer, parts in average.items()},
        logp_mediated=distribution[index, mediated_ids],
        logp_unmediated=distribution[index, unmediated_ids],
        top_tokens=tokens,
    )


@dataclass
class ContextReadings:
    """The LM's readings of each sample's prompt alone and after its context."""

    decontextual: PromptReadings
    contextual: PromptReadings


def read_samples(
    mt: models.ModelAndTokenizer,
    rows: Sequence[Mapping[str, Any]],
    layers: Sequence[int] = (),
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
) -> ContextReadings:
    """Read every sample's prompt, alone and after its context (see :func:`read_prompts`)."""
    prompts = [row["prompt"] for row in rows]
    in_context = [prompt_in_context(row["context"], row["prompt"]) for row in rows]
    return ContextReadings(
        decontextual=read_prompts(
            mt, rows, prompts, layers, batch_size, top_k, desc="read prompts"
        ),
        contextual=read_prompts(
            mt, rows, in_context, layers, batch_size, top_k, desc="read prompts in context"
        ),
    )


@dataclass
class MediationSample(DataClassJsonMixin):
    """One prompt: the top next tokens and the log-probabilities of target and comparator."""

    id: str
    predictions: list[str]
    logp_target: float
    logp_comparator: float


@dataclass
class MediationTaskResults(DataClassJsonMixin):
    """One task: per-sample readings and the accuracy (share with target > comparator)."""

    accuracy: float
    samples: list[MediationSample] = field(default_factory=list)


@dataclass
class MediationResults(DataClassJsonMixin):
    """Both tasks. Contextual target: ``target_mediated``; decontextual: ``target_unmediated``."""

    model: str
    random_init: bool
    contextual: MediationTaskResults
    decontextual: MediationTaskResults


def task_targets(readings: ContextReadings, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, comparator) log-probs of a task: the context's value in context, else the LM's."""
    if task == "contextual":
        return readings.contextual.logp_mediated, readings.contextual.logp_unmediated
    if task == "decontextual":
        return readings.decontextual.logp_unmediated, readings.decontextual.logp_mediated
    raise errors.UsageError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def mediation_from_readings(
    rows: Sequence[Mapping[str, Any]],
    readings: ContextReadings,
    model: str,
    random_init: bool = False,
) -> MediationResults:
    """The mediation results of samples already read by :func:`read_samples`."""
    tasks = {}
    for task in TASKS:
        target, comparator = task_targets(readings, task)
        reading = getattr(readings, task)
        samples = [
            MediationSample(str(row["id"]), tokens, float(t), float(c))
            for row, tokens, t, c in zip(
                rows, reading.top_tokens, target.tolist(), comparator.tolist(), strict=True
            )
        ]
        tasks[task] = MediationTaskResults(
            accuracy=metrics.share((target > comparator).numpy()), samples=samples
        )
    return MediationResults(model=model, random_init=random_init, **tasks)


def mediation(
    mt: models.ModelAndTokenizer,
    samples: precompute.Samples,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    top_k: int = DEFAULT_TOP_K,
    random_init: bool = False,
) -> MediationResults:
    """How often the LM mediates each sample's fact in context and keeps its prior without."""
    rows = sample_rows(samples)
    if not rows:
        raise errors.UsageError("no samples to evaluate")
    readings = read_samples(mt, rows, (), batch_size, top_k)
    results = mediation_from_readings(rows, readings, mt.name, random_init)
    logger.info(
        "mediation: contextual %.3f, decontextual %.3f (%d samples)",
        results.contextual.accuracy,
        results.decontextual.accuracy,
        len(rows),
    )
    return results
