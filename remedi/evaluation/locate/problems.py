"""The five editing problems of Hase et al. (2023), "Does localization inform editing?".

Each problem asks a weight-editing method (any registered :class:`Method` that edits weights)
for a different change to the fact behind a CounterFact rewrite prompt ``(s, r)``, and judges
it with its own success metric on that prompt. The definitions follow the reference code,
google/belief-localization (file and function given for each):

=====================  ==============================================  ============================
problem                the edit's objective                            success
=====================  ==============================================  ============================
``error_injection``    raise p(o_new | s, r) (CounterFact's rewrite)   rewrite score of o_new
``tracing_reversal``   raise p(o_noise | s, r), o_noise the top token  rewrite score of o_noise
                       under the noised subject
``fact_erasure``       lower p(o_true | s, r)                          erasure score of o_true
``fact_amplification`` raise p(o_true | s, r)                          rewrite score of o_true
``fact_forcing``       raise p(o_true | s_noise, r): the edit is        rewrite score of o_true
                       computed and judged under the noised subject     under noise
=====================  ==============================================  ============================

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
- Noise (``experiments/evaluate.py``, ``get_subject_noising_function``, and
  ``experiments/py/eval_utils_counterfact.py``, ``test_batch_prediction``): Gaussian noise on the
  subject's token embeddings at causal tracing's scale (:mod:`remedi.tracing`, 3 sigma). Fact
  forcing edits under a per-case stream that restarts from the same seed for every case (their
  ``np.random.RandomState(1)``) and draws afresh on every forward pass; pre and post are judged
  under one draw, the first of that same stream (their evaluation re-seeds the same generator,
  and the rewrite prompt is row 0): so the judged draw is the one the edit's first noised
  subject mention was fitted under (:func:`forcing_noise`, :func:`noised_subject`).
- Cases (``experiments/evaluate.py``, ``correctness_check``/``target_prob_check``): only facts
  the model knows: its top prediction is o_true's first token (the trace's filter) and
  ``p(o_true | s, r) > 0.1`` (:data:`MIN_TRUE_PROB`).
- Tracing effect at the edited layer (``third_party/data-analysis.ipynb``, "Join tracing and
  editing results": ``max_fraction_restored``): restoring the MLP output over a window of 5
  layers around the edit layer, the fraction restored ``max(0, (p_restored - p_corrupted) /
  |p_corrupted - p_clean|)``, maximised over the tokens from the subject's first to the
  prompt's last (:func:`tracing_effect`).
- Regressions (``third_party/data-analysis.ipynb``, "R2 values for each method"): least
  squares of the rewrite score on the layer as a categorical variable, on the tracing effect,
  and on both with their interaction (``score ~ factor(layer) * max_fraction_restored``);
  :func:`regress`.

The methods only ever raise the likelihood of ``target_new``. Two problems need more, given here
as context managers around the method's edit, so that no method changes:

- erasure (:func:`unlikelihood`): the method sees a model whose next-token distribution has
  ``o_true``'s first token's mass swapped with the rest (``p'(o) = 1 - p(o)``, every other token
  scaled by ``p(o) / (1 - p(o))``), so raising ``p'(o_true)`` lowers ``p(o_true)``: the
  unlikelihood objective ``-log(1 - p)``. Deliberately not the reference's loss, which differs by
  method (ROME, ``third_party/rome/compute_v.py``: minimise ``p`` itself; FT,
  ``baselines/ft/ft_main.py``: ``|p - p(o_true | s_noise, r)|``): both of those lower the same
  probability, and reproducing them would need an objective inside every method. KL terms a
  method keeps are measured on swapped distributions (a bijection of the originals). The edit
  targets o_true's first token (the swap is per token); success is judged on the whole o_true;
- forcing (:func:`noised_subject`): the subject's tokens are noised in every forward pass of the
  method, as the reference noises the whole edit; unlike the reference, which noises the
  rewrite prompt's subject positions in every row (wrong positions in rows with a prefix),
  every mention of the subject is noised where it is.

Not taken over: the reference's per-problem hyperparameter overrides for GPT-J
(``experiments/evaluate.py``, ``get_override_hparams``: FT norm constraints per problem, ROME's
``v_lr`` 0.05 and 25 steps for forcing); the packaged hyperparameters of each model are used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import errors, hooks, io, models, tracing
from remedi.evaluation.cases import EvalCase, EvalResources
from remedi.evaluation.methods import Method, build_method
from remedi.methods import common, registry
from remedi.report.tables import Table, TableRow

logger = logging.getLogger(__name__)

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
MIN_TRUE_PROB = 0.1
"""Cases must give o_true more than this probability (the reference's ``target_prob_check``)."""
FORCING_NOISE_SAMPLES = 1
"""Fact forcing is judged under one noise draw, as the reference's row 0."""


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


# ---------------------------------------------------------------------------------------------
# What the edits see.


@dataclass
class Switch:
    """Whether an objective's hook acts (turned off once the edit is computed)."""

    active: bool = True


def _log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p < 0``, stable at both ends."""
    return torch.where(
        log_p > -0.6931471805599453,
        torch.log(-torch.expm1(log_p)),
        torch.log1p(-torch.exp(log_p)),
    )


def swapped_log_probs(logits: torch.Tensor, token_id: int) -> torch.Tensor:
    """Log-probabilities with the mass of ``token_id`` swapped with the rest (see module doc)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    log_target = log_probs[..., token_id].clamp(max=-1e-7)
    log_rest = _log1mexp(log_target)
    swapped = log_probs + (log_target - log_rest).unsqueeze(-1)
    swapped[..., token_id] = log_rest
    return swapped


@contextlib.contextmanager
def unlikelihood(mt: models.ModelAndTokenizer, token_id: int) -> Iterator[Switch]:
    """While active, the LM head outputs :func:`swapped_log_probs` (as logits) for
    ``token_id``: a method that raises that token's likelihood then lowers its probability."""
    switch = Switch()

    def swap(key: str, output: torch.Tensor) -> torch.Tensor | None:
        if not switch.active:
            return None
        return swapped_log_probs(output, token_id).to(output.dtype)

    head = mt.model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        raise models.UnsupportedModelError(
            f"{type(mt.model).__name__} has no output embeddings (LM head) to hook"
        )
    with hooks.trace(mt.model, {"head": head}, edit_output=swap):
        yield switch


def _subject_variants(mt: models.ModelAndTokenizer, prompt: str, subject: str) -> list[list[int]]:
    ids, (start, end) = tracing.subject_token_range(mt.tokenizer, prompt, subject)
    variants = [ids[start:end]]
    for text in (subject, " " + subject):
        tokens = list(mt.tokenizer(text, add_special_tokens=False)["input_ids"])
        # A tokenizer may give the space a token of its own; it is not the subject's.
        while tokens and not str(mt.tokenizer.decode(tokens[:1])).strip():
            tokens = tokens[1:]
        variants.append(tokens)
    return [list(v) for v in dict.fromkeys(tuple(v) for v in variants) if v]


def subject_occurrences(
    input_ids: torch.Tensor, variants: Sequence[Sequence[int]]
) -> list[list[tuple[int, int]]]:
    """Per row, the ``(start, length)`` of every mention of any of the token sequences, left to
    right (the longest variant wins where several start at one position)."""
    by_length = sorted((list(v) for v in variants if v), key=len, reverse=True)
    rows = []
    for ids in input_ids.tolist():
        found, position = [], 0
        while position < len(ids):
            match = next((v for v in by_length if ids[position : position + len(v)] == v), None)
            if match is None:
                position += 1
                continue
            found.append((position, len(match)))
            position += len(match)
        rows.append(found)
    return rows


def subject_mask(input_ids: torch.Tensor, variants: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(batch, seq)``: the tokens of every occurrence of any of the token sequences."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, found in enumerate(subject_occurrences(input_ids, variants)):
        for start, length in found:
            mask[row, start : start + length] = True
    return mask


@contextlib.contextmanager
def noised_subject(
    mt: models.ModelAndTokenizer, prompt: str, subject: str, noise_scale: float, seed: int
) -> Iterator[Switch]:
    """While active, every forward pass adds ``noise_scale`` Gaussian noise to the embeddings of
    every mention of the subject's tokens (as in ``prompt``, or alone): one fresh draw of
    ``(mention length, hidden)`` per mention, rows and mentions in order, from one generator
    seeded with ``seed``. Its first draw is :func:`forcing_noise`'s (the reference judges
    forcing under the first draw of the stream the edit ran under)."""
    switch = Switch()
    variants = _subject_variants(mt, prompt, subject)
    generator = torch.Generator().manual_seed(seed)

    def noise(key: str, output: torch.Tensor) -> torch.Tensor | None:
        input_ids = traced[key].input
        if not switch.active or input_ids is None:
            return None
        noised = output.clone()
        for row, found in enumerate(subject_occurrences(input_ids, variants)):
            for start, length in found:
                draw = torch.randn(length, output.shape[-1], generator=generator)
                scaled = (noise_scale * draw.double()).to(output.device, output.dtype)
                noised[row, start : start + length] = noised[row, start : start + length] + scaled
        return noised

    embeddings: torch.nn.Module = mt.model.get_input_embeddings()
    with hooks.trace(
        mt.model, {"embeddings": embeddings}, retain_input=True, edit_output=noise
    ) as traced:
        yield switch


def forcing_noise(
    mt: models.ModelAndTokenizer, token_range: tuple[int, int], settings: tracing.TraceSettings
) -> torch.Tensor:
    """The draw fact forcing is judged under, before and after the edit: the first
    (:data:`FORCING_NOISE_SAMPLES`) of :func:`noised_subject`'s stream with ``settings.seed``."""
    return tracing.subject_noise(
        FORCING_NOISE_SAMPLES,
        token_range[1] - token_range[0],
        mt.hidden_size,
        settings.noise_scale,
        settings.seed,
    )


# ---------------------------------------------------------------------------------------------
# Probabilities.


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


# ---------------------------------------------------------------------------------------------
# Cases.


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
    trace: tracing.TraceResult


def setup_case(
    mt: models.ModelAndTokenizer,
    case: EvalCase,
    settings: tracing.TraceSettings,
    require_correct: bool = True,
) -> ProblemSetup:
    """Trace the case's rewrite prompt and measure what the problems start from (with
    ``require_correct``, a case the model answers wrongly is not traced: no edit reads it)."""
    prompt = case.rewrite_prompt or case.prompt
    trace = tracing.trace_prompt(
        mt, prompt, case.entity, case.target_true, settings, case.case_id, require_correct
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
    first = str(mt.tokenizer.decode([trace.target_id])).strip()
    if common.target_token_ids(mt.tokenizer, prompt, first or case.target_true)[:1] != [
        trace.target_id
    ]:
        first = ""  # the token is not a word of its own: erasure cannot target it alone
    return ProblemSetup(
        case_id=case.case_id,
        prompt=prompt,
        subject=case.entity,
        target_true=case.target_true,
        target_new=case.target_new,
        target_noised=target_noised,
        target_true_first=first,
        p_true=target_prob(mt, prompt, case.entity, case.target_true),
        p_new=target_prob(mt, prompt, case.entity, case.target_new),
        p_noised_target=target_prob(mt, prompt, case.entity, target_noised),
        p_true_noised=target_prob(
            mt, prompt, case.entity, case.target_true, forcing_noise(mt, token_range, settings)
        ),
        trace=trace,
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


def tracing_effect(trace: tracing.TraceResult, kind: str, window: int, layer: int) -> float:
    """The reference's ``max_fraction_restored`` at ``layer``: over the tokens from the
    subject's first to the last, the largest ``max(0, (p_restored - p_corrupted) /
    |p_corrupted - p_clean|)``; 0 when noise does not change ``p`` (nothing to restore)."""
    trace.effect_at(kind, window, layer)  # checks the kind, window and layer
    corruption = abs(trace.corrupted_prob - trace.clean_prob)
    if corruption == 0:
        return 0.0
    effects = trace.indirect_effects(kind, window)[trace.subject_range[0] :, layer]
    return float(np.clip(effects / corruption, 0.0, None).max())


def knows(setup: ProblemSetup) -> bool:
    """Whether the model knows the case's fact: its top prediction is o_true's first token and
    ``p(o_true) > MIN_TRUE_PROB`` (the reference's correctness filter)."""
    return setup.trace.correct and setup.p_true > MIN_TRUE_PROB


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
    """What the method's edit runs under for ``problem`` (see the module doc)."""
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
) -> ProblemResult:
    """Edit the model for one case and problem, measure, restore the weights."""
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
        tracing_effect=tracing_effect(setup.trace, trace_kind, trace_window, layer),
        last_subject_effect=setup.trace.effect_at(trace_kind, trace_window, layer),
    )


# ---------------------------------------------------------------------------------------------
# Methods at a layer.


def edited_layers_of(hparams: dict[str, Any]) -> list[int]:
    return [hparams["layer"]] if "layer" in hparams else list(hparams["layers"])


def method_at_layer(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    layer: int,
    **options: Any,
) -> tuple[Method, list[int]]:
    """Registered method ``name`` with its packaged hyperparameters moved to ``layer``
    (:func:`remedi.methods.registry.moved_to_layer`), and the layers it edits."""
    spec = registry.method_spec(name)
    if spec.hparams is None:
        raise errors.UsageError(f"method {name!r} has no hyperparameters to move to a layer")
    packaged = registry.load_hparams(name, mt.name).to_dict()
    moved = registry.moved_to_layer(name, packaged, layer, mt.num_layers)
    hparams = spec.hparams.from_dict(moved)
    method = build_method(name, mt, cases, resources, hparams=hparams, **options)
    return method, edited_layers_of(moved)


# ---------------------------------------------------------------------------------------------
# Running and analysing.


def run_problems(
    mt: models.ModelAndTokenizer,
    method_name: str,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    settings: tracing.TraceSettings,
    directory: Path,
    layers: Sequence[int],
    problems: Sequence[str] = PROBLEMS,
    trace_kind: str = DEFAULT_TRACE_KIND,
    trace_window: int = DEFAULT_TRACE_WINDOW,
    method_options: dict[str, Any] | None = None,
    rerun: bool = False,
) -> list[ProblemResult]:
    """Every problem at every layer for the cases the model answers correctly.

    Writes ``directory/setups/<case>.json`` and ``directory/<problem>/L<layer>/<case>.json``;
    finished files are read back, not recomputed (unless ``rerun``).
    """
    unknown = [problem for problem in problems if problem not in PROBLEMS]
    if unknown:
        raise errors.UsageError(f"unknown editing problems {unknown}; choose from {list(PROBLEMS)}")
    for layer in layers:
        tracing.layer_window(layer, 1, mt.num_layers)
    settings = dataclasses.replace(settings, kinds=[trace_kind], windows=[trace_window])
    directory = Path(directory)
    setups: dict[int, ProblemSetup] = {}
    for case in tqdm(cases, desc="tracing cases"):
        path = directory / "setups" / f"{case.case_id}.json"
        if path.is_file() and not rerun:
            saved = ProblemSetup.from_dict(io.read_json(path, "problem setup"))
            if saved.trace.settings == settings:
                setups[case.case_id] = saved
                continue
        setups[case.case_id] = setup_case(mt, case, settings)
        io.write_json(path, setups[case.case_id].to_dict(), indent=None)
    correct = [case for case in cases if knows(setups[case.case_id])]
    logger.info(
        "%d of %d cases answered correctly with p(o_true) > %s; editing those",
        len(correct),
        len(cases),
        MIN_TRUE_PROB,
    )

    results = []
    for layer in layers:
        for problem in problems:
            out = directory / problem / f"L{layer}"
            todo = [c for c in correct if rerun or not (out / f"{c.case_id}.json").is_file()]
            for case in correct:
                if case not in todo:
                    saved = io.read_json(out / f"{case.case_id}.json", "problem result")
                    results.append(ProblemResult.from_dict(saved))
            if not todo:
                continue
            # A new method per problem: methods cache their edit by case id.
            method, edited = method_at_layer(
                method_name,
                mt,
                todo,
                resources,
                layer,
                **(method_options or {}),
            )
            for case in tqdm(todo, desc=f"{problem} L{layer}"):
                try:
                    result = edit_case(
                        mt,
                        method,
                        problem,
                        case,
                        setups[case.case_id],
                        settings,
                        layer,
                        edited,
                        trace_kind,
                        trace_window,
                    )
                except errors.SampleError as error:  # e.g. a target erasure cannot isolate
                    logger.warning("%s skips case %d: %s", problem, case.case_id, error)
                    continue
                io.write_json(out / f"{case.case_id}.json", result.to_dict(), indent=None)
                results.append(result)
    return results


def read_results(directory: Path) -> list[ProblemResult]:
    """Every problem result saved under ``directory`` (see :func:`run_problems`)."""
    paths = sorted(Path(directory).glob("*/L*/*.json"))
    return [ProblemResult.from_dict(io.read_json(path, "problem result")) for path in paths]


def r_squared(y: np.ndarray, features: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``y`` on ``features`` (n, k) plus an intercept."""
    y = np.asarray(y, dtype=np.float64)
    design = np.column_stack([np.ones(len(y)), np.asarray(features, dtype=np.float64)])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    total = ((y - y.mean()) ** 2).sum()
    if total == 0:
        return float("nan")
    return float(1.0 - (residual**2).sum() / total)


def layer_indicators(layers: Sequence[int]) -> np.ndarray:
    """One-hot columns of the edit layer as a categorical variable (the first level dropped)."""
    levels = sorted(set(layers))
    return np.array([[layer == level for level in levels[1:]] for layer in layers], dtype=float)


@dataclass
class Regressions(DataClassJsonMixin):
    """R^2 of one problem's success on the tracing effect, the edit layer, and both."""

    problem: str
    num_edits: int
    tracing: float
    layer: float
    both: float


def regress(results: Sequence[ProblemResult]) -> Regressions:
    """Regress success on the tracing effect, on the layer (categorical), and on both with
    their interaction."""
    problems = {result.problem for result in results}
    if len(problems) != 1:
        raise errors.UsageError(f"regress one problem at a time, got {sorted(problems)}")
    y = np.array([result.success for result in results])
    effect = np.array([[result.tracing_effect] for result in results])
    layers = layer_indicators([result.layer for result in results])
    # The reference's full model: score ~ factor(layer) * tracing, interactions included.
    both = np.column_stack([effect, layers, layers * effect])
    return Regressions(
        problem=problems.pop(),
        num_edits=len(results),
        tracing=r_squared(y, effect),
        layer=r_squared(y, layers),
        both=r_squared(y, both),
    )


def analyze(results: Sequence[ProblemResult], title: str = "") -> tuple[Table, Table]:
    """The R^2 table (problems x {tracing, layer, both}) and the mean success by layer."""
    by_problem: dict[str, list[ProblemResult]] = {}
    for result in results:
        by_problem.setdefault(result.problem, []).append(result)
    ordered = [problem for problem in PROBLEMS if problem in by_problem]
    if not ordered:
        raise errors.UsageError("no editing problem results to analyse; run x.edit.problems")
    regressions = [regress(by_problem[problem]) for problem in ordered]
    r2 = Table(
        title=f"R^2 of edit success{': ' + title if title else ''}",
        columns={"tracing": "Tracing effect", "layer": "Edit layer", "both": "Both"},
        rows=[
            TableRow(
                f"{PROBLEM_LABELS[reg.problem]} (n={reg.num_edits})",
                {"tracing": reg.tracing, "layer": reg.layer, "both": reg.both},
            )
            for reg in regressions
        ],
        notes=[
            "Least squares with an intercept; the layer enters as a categorical variable; "
            "'Both' includes the layer x tracing interaction. Tracing effect: the max fraction "
            "restored at the edit layer over the tokens from the subject on."
        ],
        digits=3,
    )
    layers = sorted({result.layer for result in results})
    by_layer = Table(
        title=f"Mean edit success by layer{': ' + title if title else ''}",
        columns={str(layer): f"L{layer}" for layer in layers},
        rows=[
            TableRow(
                PROBLEM_LABELS[problem],
                {
                    str(layer): _mean([r.success for r in by_problem[problem] if r.layer == layer])
                    for layer in layers
                },
            )
            for problem in ordered
        ],
        notes=[
            "Rewrite score max(0, (p_post - p_pre) / (1 - p_pre)); erasure score "
            "max(0, (p_pre - p_post) / p_pre)."
        ],
        digits=3,
    )
    return r2, by_layer


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None
