"""The five editing problems of Hase et al. (2023): each one's target, objective and success, and
one edit of one case (:func:`edit_case`).

The definitions follow the reference code, google/belief-localization (file and function given
for each; the table is in :mod:`remedi.evaluation.locate`):

- Targets (``experiments/evaluate.py``, ``main``: the ``request_baseline``/``target_new`` block):
  error injection keeps CounterFact's o_new; tracing reversal takes the argmax of the
  last-position distribution averaged over the noise samples
  (``experiments/causal_trace.py``, ``corrupted_forward_pass``), o_true's token not excluded
  (a later revision of ``evaluate.py`` generates up to 12 tokens under one draw instead);
  erasure, amplification and forcing set the target to o_true.
- Success (``experiments/evaluate.py``, ``make_editing_results_df``): ``p`` is the probability
  of the whole target after the rewrite prompt (the product over its tokens,
  ``util/fewshot_utils.py``, ``score_from_batch``), before (``pre``) and after (``post``) the
  edit; the rewrite score is ``max(0, (post - pre) / (1 - pre))`` (their ``recovered_prop``)
  and the erasure score ``max(0, (pre - post) / pre)`` (``erased_prop``): both bounded below
  by 0 (:func:`rewrite_score`, :func:`erasure_score`).
- Tracing effect at the edited layer (``third_party/data-analysis.ipynb``, cell "Postprocess
  tracing data" and the ``max_per_layer_per_record`` block: ``max_fraction_restored``):
  restoring the MLP output over a window of 5 layers around the edit layer, the fraction
  restored ``max(0, (p_restored - p_corrupted) / |p_corrupted - p_clean|)``, maximised over the
  tokens from the subject's first to the prompt's last (:func:`setup_effects`). ``p`` is the
  whole o_true teacher forced under the reference protocol
  (:class:`~remedi.evaluation.locate.target_trace.TargetTrace`), o_true's first token under
  ``ours`` (:func:`tracing_effect`).
- Per-problem hyperparameters (``experiments/evaluate.py:57-136``): applied by the runner from
  :data:`~remedi.evaluation.locate.protocols.PROBLEM_HPARAMS`; each result records the
  overrides its edit ran with (:attr:`ProblemResult.hparams`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dataclasses_json import DataClassJsonMixin

from remedi import errors, models, tracing
from remedi.evaluation.cases import EvalCase
from remedi.evaluation.locate.objectives import Switch, forcing_noise, noised_subject, unlikelihood
from remedi.evaluation.locate.setups import ProblemSetup, target_prob
from remedi.evaluation.methods import Method
from remedi.methods import common, registry

PROBLEMS = (
    "error_injection",
    "tracing_reversal",
    "fact_erasure",
    "fact_amplification",
    "fact_forcing",
)
PROBLEM_LABELS = {
    "error_injection": "Error injection",
    "tracing_reversal": "Tracing reversal",
    "fact_erasure": "Fact erasure",
    "fact_amplification": "Fact amplification",
    "fact_forcing": "Fact forcing",
}
DEFAULT_TRACE_KIND = "mlp"
DEFAULT_TRACE_WINDOW = 5
"""The reference regresses on MLP tracing with a window of 5 (``TRACE_WINDOW_SIZE = 5``)."""


def rewrite_score(pre: float, post: float) -> float:
    """How much of the way from ``pre`` to certainty an edit raised a probability,
    ``max(0, (post - pre) / (1 - pre))`` (0 when it lowered it, as the reference)."""
    if pre >= 1.0:
        return 0.0
    return max(0.0, (post - pre) / (1.0 - pre))


def erasure_score(pre: float, post: float) -> float:
    """How much of ``pre`` an edit took away, ``max(0, (pre - post) / pre)``."""
    if pre <= 0.0:
        return 0.0
    return max(0.0, (pre - post) / pre)


@dataclass
class ProblemResult(DataClassJsonMixin):
    """One edit: what it aimed at, the probabilities before and after, and its success."""

    case_id: int
    problem: str
    method: str
    layer: int
    """The central edited layer."""
    edited_layers: list[int]
    target: str
    pre: float
    post: float
    success: float
    tracing_effect: float
    """:func:`tracing_effect` at the central edited layer (the regressions' variable)."""
    last_subject_effect: float
    """The raw indirect effect at the edited layer and the subject's last token (ROME's view)."""
    window: int = 1
    """Layers the method edits around the central one (the R^2 groups by method and window)."""
    protocol: str = "ours"
    hparams: dict[str, Any] = field(default_factory=dict)
    """The per-problem hyperparameter overrides the edit ran with (none under ``ours``)."""


def tracing_effect(trace: tracing.TraceResult, kind: str, window: int, layer: int) -> float:
    """The reference's ``max_fraction_restored`` at ``layer``: over the tokens from the
    subject's first to the last, the largest ``max(0, (p_restored - p_corrupted) /
    |p_corrupted - p_clean|)``; 0 when noise does not change ``p`` (nothing to restore)."""
    trace.effect_at(kind, window, layer)  # checks the kind, window and layer
    corruption = abs(trace.corrupted() - trace.clean_prob)
    if corruption == 0:
        return 0.0
    effects = trace.indirect_effects(kind, window)[trace.subject_range[0] :, layer]
    return float(np.clip(effects / corruption, 0.0, None).max())


def setup_effects(setup: ProblemSetup, kind: str, window: int, layer: int) -> tuple[float, float]:
    """The tracing effect at ``layer`` (the regressions' variable) and the raw indirect effect at
    the subject's last token, from the setup's whole-target trace (reference protocol; its own
    kind and window) or its first-token trace (``ours``; ``kind`` and ``window``)."""
    if setup.target_trace is not None:
        return (
            setup.target_trace.fraction_restored(layer),
            setup.target_trace.last_subject_effect(layer),
        )
    if setup.trace is None:
        raise errors.UsageError(
            f"case {setup.case_id} has no trace; set it up with setup_case and, under the "
            "reference protocol, trace the whole target (target_trace.trace_target)"
        )
    return (
        tracing_effect(setup.trace, kind, window, layer),
        setup.trace.effect_at(kind, window, layer),
    )


def edit_target(problem: str, setup: ProblemSetup) -> str:
    """The text the method is asked to make likely for ``problem``."""
    if problem == "error_injection":
        return setup.target_new
    if problem == "tracing_reversal":
        return setup.target_noised
    if problem == "fact_erasure":
        if not setup.target_true_first:
            raise errors.SampleError(
                f"case {setup.case_id}: the first token of {setup.target_true!r} is not a word "
                "the tokenizer gives back alone; fact erasure cannot target it"
            )
        return setup.target_true_first
    if problem in ("fact_amplification", "fact_forcing"):
        return setup.target_true
    raise errors.UsageError(f"unknown editing problem {problem!r}; choose from {list(PROBLEMS)}")


@contextlib.contextmanager
def objective(
    mt: models.ModelAndTokenizer,
    problem: str,
    setup: ProblemSetup,
    settings: tracing.TraceSettings,
) -> Iterator[Switch]:
    """What the method's edit runs under for ``problem`` (see
    :mod:`~remedi.evaluation.locate.objectives`)."""
    if problem == "fact_erasure":
        first = common.target_token_ids(mt.tokenizer, setup.prompt, setup.target_true)[0]
        with unlikelihood(mt, first) as switch:
            yield switch
    elif problem == "fact_forcing":
        # One seed for every case, as the reference's RandomState(1) per case.
        with noised_subject(
            mt, setup.prompt, setup.subject, settings.noise_scale, settings.seed
        ) as switch:
            yield switch
    else:
        yield Switch()


def measure(
    mt: models.ModelAndTokenizer, problem: str, setup: ProblemSetup, settings: tracing.TraceSettings
) -> float:
    """The probability ``problem`` judges: of its target, under noise for forcing."""
    target = setup.target_true if problem == "fact_erasure" else edit_target(problem, setup)
    noise = None
    if problem == "fact_forcing":
        _, token_range = tracing.subject_token_range(mt.tokenizer, setup.prompt, setup.subject)
        noise = forcing_noise(mt, token_range, settings)
    return target_prob(mt, setup.prompt, setup.subject, target, noise)


def pre_probability(problem: str, setup: ProblemSetup) -> float:
    """The unedited probability ``problem`` starts from."""
    return {
        "error_injection": setup.p_new,
        "tracing_reversal": setup.p_noised_target,
        "fact_erasure": setup.p_true,
        "fact_amplification": setup.p_true,
        "fact_forcing": setup.p_true_noised,
    }[problem]


def success(problem: str, pre: float, post: float) -> float:
    """The problem's success metric (erasure score for erasure, else rewrite score)."""
    return erasure_score(pre, post) if problem == "fact_erasure" else rewrite_score(pre, post)


def edit_case(
    mt: models.ModelAndTokenizer,
    method: Method,
    problem: str,
    case: EvalCase,
    setup: ProblemSetup,
    settings: tracing.TraceSettings,
    layer: int,
    edited_layers: Sequence[int],
    trace_kind: str = DEFAULT_TRACE_KIND,
    trace_window: int = DEFAULT_TRACE_WINDOW,
    window: int = 1,
    protocol: str = "ours",
    hparams: dict[str, Any] | None = None,
) -> ProblemResult:
    """Edit the model for one case and problem, measure, restore the weights. ``window``,
    ``protocol`` and ``hparams`` (the overrides ``method`` was built with) are recorded."""
    if not method.edits_weights:
        raise errors.UsageError(
            f"method {method.name!r} does not edit weights; the editing problems need a weight "
            f"editing method ({', '.join(registry.names('weights', prepared=True))})"
        )
    target = edit_target(problem, setup)
    request = dataclasses.replace(case, target_new=target, rewrite_prompt=setup.prompt)
    with objective(mt, problem, setup, settings) as switch, method.applied(mt, request):
        switch.active = False
        post = measure(mt, problem, setup, settings)
    pre = pre_probability(problem, setup)
    effect, last_subject_effect = setup_effects(setup, trace_kind, trace_window, layer)
    return ProblemResult(
        case_id=case.case_id,
        problem=problem,
        method=method.name,
        layer=layer,
        edited_layers=list(edited_layers),
        target=target,
        pre=pre,
        post=post,
        success=success(problem, pre, post),
        tracing_effect=effect,
        last_subject_effect=last_subject_effect,
        window=window,
        protocol=protocol,
        hparams=dict(hparams or {}),
    )
