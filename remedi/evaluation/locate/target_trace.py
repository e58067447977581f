"""The reference protocol's fact filter and tracing effect: what belief-localization measures
before any edit (see :mod:`remedi.evaluation.locate.protocols` for the file:line of each).

- :func:`reference_target_prob`: ``p(o_true | s, r)`` as the reference's ``score_from_batch``
  computes it (``third_party/util/fewshot_utils.py:18-55,65-86``): the prompt's tokens, then the
  tokens of ``" " + o_true`` tokenized alone, teacher forced, the product of their probabilities.
  Where a tokenizer adds special tokens, the target's are left out (the reference's GPT-2 and
  GPT-J tokenizers add none; for one that adds BOS, its ``encode`` would put BOS inside the
  target).
- :func:`greedy_continuation` and :func:`generation_contains`: the greedy continuation of 36 new
  tokens, and whether it contains o_true case-folded (``fewshot_utils.py:92-129,139-197``). The
  reference decodes prompt and continuation together and deletes the prompt's text; here the
  new tokens are decoded alone, special tokens (its pad, which is EOS) skipped. The filter
  stops generating once o_true appears, and does not generate for a fact whose ``p`` already
  fails (the verdict is the same; the saved generation is then shorter, or absent).
- :func:`trace_target`: causal tracing of the whole o_true (``experiments/causal_trace.py:
  244-306,333-357``): clean, corrupted (the subject's embeddings noised, one fixed draw of
  ``num_samples`` samples shared by every run) and restored runs of the prompt followed by
  o_true's tokens, scoring the teacher-forced probability of all of o_true, averaged over the
  samples. Only the tokens from the subject's first to the prompt's last are restored, as the
  reference's, and only at the layers asked for (the edit layers: the regressions read no
  other), so a resumed run traces the layers it adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import transformers
from dataclasses_json import DataClassJsonMixin

from remedi import errors, hooks, models, tracing

DEFAULT_MAX_BATCH_ROWS = 256


def reference_target_ids(mt: models.ModelAndTokenizer, target: str) -> list[int]:
    """The tokens of ``" " + target`` alone, as the reference appends them to the prompt's."""
    ids = list(mt.tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise errors.SampleError(f"the target {target!r} has no tokens")
    return ids


def _sequence_probs(
    mt: models.ModelAndTokenizer, input_ids: torch.Tensor, num_target: int
) -> torch.Tensor:
    """``(rows,)`` float64: the product of the probabilities of each row's last ``num_target``
    tokens, each given the tokens before it."""
    rows, seq_len = input_ids.shape
    positions = torch.zeros(rows, seq_len, dtype=torch.bool)
    positions[:, seq_len - num_target - 1 : seq_len - 1] = True
    logits = models.logits_at(mt.model, {"input_ids": input_ids}, positions)
    log_probs = torch.log_softmax(logits.float(), dim=-1).view(rows, num_target, -1)
    labels = input_ids[:, seq_len - num_target :].to(log_probs.device)
    chosen = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).double()
    return chosen.sum(dim=-1).exp().cpu()


def reference_target_prob(mt: models.ModelAndTokenizer, prompt: str, target: str) -> float:
    """``p(target | prompt)`` as the reference's filter computes it (module description)."""
    target_ids = reference_target_ids(mt, target)
    ids = list(mt.tokenizer(prompt)["input_ids"]) + target_ids
    with torch.no_grad():
        probs = _sequence_probs(mt, torch.tensor([ids], device=mt.device), len(target_ids))
    return float(probs[0])


class _ContainsStop(transformers.StoppingCriteria):
    """Stops a one-row greedy generation once its new tokens' text contains ``target``."""

    def __init__(self, mt: models.ModelAndTokenizer, prompt_length: int, target: str) -> None:
        self.tokenizer, self.prompt_length, self.target = mt.tokenizer, prompt_length, target

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        new = input_ids[0, self.prompt_length :].tolist()
        text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        found = generation_contains(text, self.target)
        return torch.full((input_ids.shape[0],), found, dtype=torch.bool)  # type: ignore[return-value]


def greedy_continuation(
    mt: models.ModelAndTokenizer, prompt: str, max_new_tokens: int, until: str | None = None
) -> str:
    """The greedy continuation of ``prompt``: up to ``max_new_tokens`` new tokens, decoded;
    with ``until``, cut short once it contains ``until`` (the filter's verdict cannot change
    after: a longer continuation still contains it)."""
    input_ids = torch.tensor([mt.tokenizer(prompt)["input_ids"]], device=mt.device)
    pad = mt.tokenizer.pad_token_id
    if pad is None:
        pad = mt.tokenizer.eos_token_id
    stops = transformers.StoppingCriteriaList()
    if until is not None:
        stops.append(_ContainsStop(mt, input_ids.shape[1], until))
    model: Any = mt.model  # a transformers model; its generate is not typed as callable
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            stopping_criteria=stops,
        )
    new = output[0, input_ids.shape[1] :].tolist()
    return str(mt.tokenizer.decode(new, skip_special_tokens=True)).strip()


def generation_contains(generation: str, target: str) -> bool:
    """Whether ``target`` occurs in ``generation``, both case-folded and stripped (the
    reference's ``fewshot_accuracy_sum`` with one label)."""
    return target.strip().lower() in generation.strip().lower()


@dataclass
class TargetTrace(DataClassJsonMixin):
    """The causal trace of the whole target at some layers (module description)."""

    kind: str
    window: int
    noise_scale: float
    num_samples: int
    seed: int
    subject_range: list[int]
    prompt_length: int
    target_ids: list[int]
    clean_prob: float
    corrupted_prob: float
    restored: dict[str, list[float]] = field(default_factory=dict)
    """By layer (as text, for JSON): ``p(target)`` restored at each token from the subject's
    first to the prompt's last."""

    def matches(self, kind: str, window: int, settings: tracing.TraceSettings) -> bool:
        """Whether this trace was computed under ``kind``, ``window`` and ``settings``' noise."""
        return (
            (self.kind, self.window, self.num_samples, self.seed)
            == (kind, window, settings.num_samples, settings.seed)
        ) and bool(np.isclose(self.noise_scale, settings.noise_scale, rtol=1e-9, atol=0.0))

    def restored_at(self, layer: int) -> np.ndarray:
        """``p(target)`` restored at ``layer``, one entry per token from the subject's first."""
        if str(layer) not in self.restored:
            raise errors.UsageError(
                f"the whole-target trace has no layer {layer} (has {sorted(self.restored)}); "
                "trace it first (trace_target with that layer)"
            )
        return np.asarray(self.restored[str(layer)], dtype=np.float64)

    def fraction_restored(self, layer: int) -> float:
        """The largest ``max(0, (p_restored - p_corrupted) / |p_corrupted - p_clean|)`` over
        the tokens at ``layer`` (0 when the noise does not change ``p``).

        The reference's notebook divides by ``|p_corrupted - high_score|``, ``high_score`` the
        larger of the clean probability and the largest restored one at any layer
        (``experiments/causal_trace.py:411``, ``experiments/tracing.py:268``); that needs every
        layer traced, and a layer added later would change the effect already saved at the
        others, so the clean probability is used here."""
        corruption = abs(self.corrupted_prob - self.clean_prob)
        if corruption == 0:
            return 0.0
        effects = (self.restored_at(layer) - self.corrupted_prob) / corruption
        return float(np.clip(effects, 0.0, None).max())

    def last_subject_effect(self, layer: int) -> float:
        """``p_restored - p_corrupted`` at the subject's last token and ``layer``."""
        start, end = self.subject_range
        return float(self.restored_at(layer)[end - 1 - start] - self.corrupted_prob)


def trace_target(
    mt: models.ModelAndTokenizer,
    prompt: str,
    subject: str,
    target: str,
    settings: tracing.TraceSettings,
    kind: str,
    window: int,
    layers: Sequence[int],
    previous: TargetTrace | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> TargetTrace:
    """Trace the whole ``target`` at ``layers`` (module description); ``previous``, a trace of
    the same case and settings, keeps the layers it has and gains the missing ones."""
    ids, token_range = tracing.subject_token_range(mt.tokenizer, prompt, subject)
    target_ids = reference_target_ids(mt, target)
    input_ids = torch.tensor([ids + target_ids], device=mt.device)
    num_target, seq_len = len(target_ids), input_ids.shape[1]
    noise = tracing.subject_noise(
        settings.num_samples,
        token_range[1] - token_range[0],
        mt.hidden_size,
        settings.noise_scale,
        settings.seed,
    )
    samples = noise.shape[0]
    if previous is None:
        with torch.no_grad():
            clean = float(_sequence_probs(mt, input_ids, num_target)[0])
            with tracing.noised_embeddings(mt, token_range, noise):
                corrupted = _sequence_probs(mt, input_ids.expand(samples, -1), num_target)
        previous = TargetTrace(
            kind=kind,
            window=window,
            noise_scale=settings.noise_scale,
            num_samples=settings.num_samples,
            seed=settings.seed,
            subject_range=list(token_range),
            prompt_length=len(ids),
            target_ids=target_ids,
            clean_prob=clean,
            corrupted_prob=float(corrupted.mean()),
        )
    missing = [layer for layer in dict.fromkeys(layers) if str(layer) not in previous.restored]
    if not missing:
        return previous
    tokens = list(range(token_range[0], len(ids)))
    configs = [(token, layer) for layer in missing for token in tokens]
    restore = torch.zeros(len(configs), mt.num_layers, seq_len, dtype=torch.bool)
    for index, (token, layer) in enumerate(configs):
        restore[index, tracing.layer_window(layer, window, mt.num_layers), token] = True
    touched = [layer for layer in range(mt.num_layers) if bool(restore[:, layer].any())]
    _, states = tracing.clean_states(mt, input_ids, [kind])
    modules = {layer: tracing.module_of(mt, kind, layer) for layer in touched}
    probs = torch.empty(len(configs), dtype=torch.float64)
    per_pass = max(1, max_batch_rows // samples)
    for first in range(0, len(configs), per_pass):
        chunk = restore[first : first + per_pass].to(mt.device)
        row_masks = chunk.repeat_interleave(samples, dim=0)

        def put_back(
            layer: int, hidden: torch.Tensor, masks: torch.Tensor = row_masks
        ) -> torch.Tensor:
            clean_state = states[(kind, layer)].to(hidden).unsqueeze(0)
            return torch.where(masks[:, layer].unsqueeze(-1), clean_state, hidden)

        rows = input_ids.expand(row_masks.shape[0], -1)
        with (
            torch.no_grad(),
            tracing.noised_embeddings(mt, token_range, noise),
            hooks.trace(mt.model, modules, edit_output=put_back),
        ):
            scored = _sequence_probs(mt, rows, num_target)
        probs[first : first + chunk.shape[0]] = scored.view(chunk.shape[0], samples).mean(dim=1)
    by_layer = probs.view(len(missing), len(tokens))
    for index, layer in enumerate(missing):
        previous.restored[str(layer)] = by_layer[index].tolist()
    return previous
