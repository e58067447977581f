"""What the unedited model says about a case: the targets and probabilities every problem starts
from, the case's causal trace, and whether the model knows the fact.

- Cases: only facts the model knows (:func:`knows`). Under the reference protocol (the
  default), a greedy generation of 36 tokens contains o_true and ``p(o_true | s, r) > 0.02``
  as the reference computes ``p`` (``third_party/experiments/evaluate.py:453-472,851``; see
  :mod:`~remedi.evaluation.locate.target_trace`); under ``ours``, the top prediction is
  o_true's first token (the trace's filter) and ``p(o_true | s, r) > 0.1``
  (:data:`MIN_TRUE_PROB`), a threshold the reference does not use (its ``--correctness_filter``
  help names 0.1, ``evaluate.py:733``, but the code passes 0.02).
- The trace: under ``ours``, :func:`remedi.tracing.trace_prompt` of o_true's first token at
  every layer and token; under the reference protocol, the whole o_true teacher forced
  (:class:`~remedi.evaluation.locate.target_trace.TargetTrace`), traced at the edit layers by
  the runner once a case is known.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, models, tracing
from remedi.evaluation.cases import EvalCase
from remedi.evaluation.locate import protocols
from remedi.evaluation.locate.objectives import forcing_noise
from remedi.evaluation.locate.target_trace import (
    TargetTrace,
    generation_contains,
    greedy_continuation,
    reference_target_prob,
)
from remedi.methods import common

MIN_TRUE_PROB = protocols.MIN_TRUE_PROB["ours"]
"""Under ``ours``, cases must give o_true more than this probability."""


def target_prob(
    mt: models.ModelAndTokenizer,
    prompt: str,
    subject: str,
    target: str,
    noise: torch.Tensor | None = None,
) -> float:
    """``p(target | prompt)`` (the product over the target's tokens); with ``noise``
    (``(samples, subject tokens, hidden)``), the mean over the samples of the subject noised."""
    target_ids = common.target_token_ids(mt.tokenizer, prompt, target)
    batch = common.edit_batch(mt.tokenizer, [prompt], subject, [target_ids]).to(mt.device)
    rows = 1 if noise is None else noise.shape[0]
    input_ids = batch.input_ids.expand(rows, -1)
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if noise is not None:
        _, token_range = tracing.subject_token_range(mt.tokenizer, prompt, subject)
        context = tracing.noised_embeddings(mt, token_range, noise)
    with torch.no_grad(), context:
        logits = mt.model(input_ids=input_ids).logits
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    labels = batch.labels.expand(rows, -1)
    token_log_probs = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    sequence = (token_log_probs * batch.target_mask.expand(rows, -1)).sum(dim=-1)
    return float(sequence.exp().mean())


@dataclass
class ProblemSetup(DataClassJsonMixin):
    """What the unedited model says about one case: the targets and probabilities every problem
    starts from, and the case's causal trace."""

    case_id: int
    prompt: str
    subject: str
    target_true: str
    target_new: str
    target_noised: str
    """The most likely next token under the noised subject (mean over the trace's samples)."""
    target_true_first: str
    """o_true's first token as text (what erasure pushes down; the rest follows it)."""
    p_true: float
    p_new: float
    p_noised_target: float
    p_true_noised: float
    """p(o_true | s_noise, r) under :func:`forcing_noise`: where fact forcing starts."""
    trace: tracing.TraceResult | None
    """Under ``ours``: the trace of o_true's first token (None under the reference protocol)."""
    protocol: str = "ours"
    settings: tracing.TraceSettings | None = None
    """The noise the setup was measured under."""
    generation: str | None = None
    """The reference filter's greedy continuation, cut where it first contains o_true (None
    under ``ours``, or where ``p`` fails the filter: nothing was generated)."""
    filter_prob: float | None = None
    """``p(o_true | s, r)`` as the protocol's filter computes it."""
    target_trace: TargetTrace | None = None
    """Under the reference protocol: the whole o_true traced at the edit layers (once known)."""


def setup_case(
    mt: models.ModelAndTokenizer,
    case: EvalCase,
    settings: tracing.TraceSettings,
    require_correct: bool = True,
    protocol: str = "ours",
) -> ProblemSetup:
    """Measure what the problems start from and what the ``protocol``'s filter reads; under
    ``ours`` also trace the case's rewrite prompt (with ``require_correct``, a case the model
    answers wrongly is not traced: no edit reads it)."""
    if protocol not in protocols.PROTOCOLS:
        raise errors.UsageError(
            f"unknown protocol {protocol!r}; choose from {list(protocols.PROTOCOLS)}"
        )
    prompt = case.rewrite_prompt or case.prompt
    trace = None
    target_id = common.target_token_ids(mt.tokenizer, prompt, case.target_true)[0]
    generation, filter_prob = None, None
    if protocol == "ours":
        trace = tracing.trace_prompt(
            mt, prompt, case.entity, case.target_true, settings, case.case_id, require_correct
        )
        target_id = trace.target_id
    else:
        filter_prob = reference_target_prob(mt, prompt, case.target_true)
        if filter_prob > protocols.MIN_TRUE_PROB["reference"]:  # else it fails the filter anyway
            generation = greedy_continuation(
                mt, prompt, protocols.GENERATION_TOKENS, until=case.target_true
            )
    ids, token_range = tracing.subject_token_range(mt.tokenizer, prompt, case.entity)
    noise = evaluation_noise(mt, token_range, settings)
    with torch.no_grad(), tracing.noised_embeddings(mt, token_range, noise):
        positions = torch.zeros(noise.shape[0], len(ids), dtype=torch.bool)
        positions[:, -1] = True
        input_ids = torch.tensor([ids], device=mt.device).expand(noise.shape[0], -1)
        logits = models.logits_at(mt.model, {"input_ids": input_ids}, positions)
    # The reference's o_noise is the plain argmax: it may be o_true's own token.
    noised = torch.softmax(logits.double(), dim=-1).mean(dim=0)
    target_noised = str(mt.tokenizer.decode([int(noised.argmax())])).strip()
    if not target_noised:
        raise errors.SampleError(
            f"case {case.case_id}: the noised prediction decodes to blank text; it cannot be a "
            "target"
        )
    first = str(mt.tokenizer.decode([target_id])).strip()
    if common.target_token_ids(mt.tokenizer, prompt, first or case.target_true)[:1] != [target_id]:
        first = ""  # the token is not a word of its own: erasure cannot target it alone
    p_true = target_prob(mt, prompt, case.entity, case.target_true)
    return ProblemSetup(
        case_id=case.case_id,
        prompt=prompt,
        subject=case.entity,
        target_true=case.target_true,
        target_new=case.target_new,
        target_noised=target_noised,
        target_true_first=first,
        p_true=p_true,
        p_new=target_prob(mt, prompt, case.entity, case.target_new),
        p_noised_target=target_prob(mt, prompt, case.entity, target_noised),
        p_true_noised=target_prob(
            mt, prompt, case.entity, case.target_true, forcing_noise(mt, token_range, settings)
        ),
        trace=trace,
        protocol=protocol,
        settings=settings,
        generation=generation,
        filter_prob=p_true if filter_prob is None else filter_prob,
    )


def evaluation_noise(
    mt: models.ModelAndTokenizer, token_range: tuple[int, int], settings: tracing.TraceSettings
) -> torch.Tensor:
    """The trace's fixed noise samples (what tracing reversal's o_noise is read under)."""
    return tracing.subject_noise(
        settings.num_samples,
        token_range[1] - token_range[0],
        mt.hidden_size,
        settings.noise_scale,
        settings.seed,
    )


def knows(setup: ProblemSetup, min_true_prob: float | None = None) -> bool:
    """Whether the model knows the case's fact, by the setup's protocol (module description):
    ``p(o_true)`` as its filter computes it above ``min_true_prob`` (default: the protocol's),
    and, under the reference protocol, o_true in the greedy generation, under ``ours``, o_true's
    first token the top prediction."""
    if min_true_prob is None:
        min_true_prob = protocols.MIN_TRUE_PROB[setup.protocol]
    prob = setup.p_true if setup.filter_prob is None else setup.filter_prob
    if setup.protocol == "reference":
        return generation_contains(setup.generation or "", setup.target_true) and (
            prob > min_true_prob
        )
    return setup.trace is not None and setup.trace.correct and prob > min_true_prob
