"""The five editing problems of Hase et al. (2023), "Does localization inform editing?".

Each problem asks a weight-editing method (any registered :class:`Method` that edits weights)
for a different change to the fact behind a CounterFact rewrite prompt ``(s, r)``, and judges
it with its own success metric on that prompt:

=====================  ================================================  ==========================
problem                the edit's objective                              success
=====================  ================================================  ==========================
``error_injection``    raise p(o_new | s, r) (CounterFact's rewrite)     rewrite score of o_new
``tracing_reversal``   raise p(o_noise | s, r), o_noise the prediction    rewrite score of o_noise
                       under the noised subject
``fact_erasure``       lower p(o_true | s, r)                            erasure score of o_true
``fact_amplification`` raise p(o_true | s, r)                            rewrite score of o_true
``fact_forcing``       raise p(o_true | s_noise, r): the edit is computed  rewrite score of o_true
                       and judged under the noised subject                under noise
=====================  ================================================  ==========================

with the rewrite score ``(p_post - p_pre) / (1 - p_pre)`` and the erasure score
``(p_pre - p_post) / p_pre`` (:func:`rewrite_score`, :func:`erasure_score`), ``p`` the probability
of the whole target after the prompt. The noise is causal tracing's (:mod:`remedi.tracing`):
``3 sigma`` Gaussian noise on the subject's token embeddings; judged under noise, ``p`` is the mean
over the trace's fixed noise samples.

The methods only ever raise the likelihood of ``target_new``. Two problems need more, given here
as context managers around the method's edit, so that no method changes:

- erasure (:func:`unlikelihood`): the method sees a model whose next-token distribution has
  ``o_true``'s first token's mass swapped with the rest (``p'(o) = 1 - p(o)``, every other token
  scaled by ``p(o) / (1 - p(o))``), so raising ``p'(o_true)`` lowers ``p(o_true)``: the
  unlikelihood objective ``-log(1 - p)``. KL terms a method keeps are then measured on swapped
  distributions (a bijection of the originals). The edit targets o_true's first token (the swap
  is per token), and success is judged on the whole of o_true;
- forcing (:func:`noised_subject`): the subject's tokens are noised in every forward pass of the
  method, fresh noise each pass (as the reference noises the whole edit).

Beside each edit's success, the case's tracing effect at the edited layer (the indirect effect of
restoring that layer at the subject's last token) is kept, for :func:`analyze`'s regressions.
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

from remedi import errors, io, models, tracing
from remedi.evaluation.cases import EvalCase, EvalResources
from remedi.evaluation.methods import Method, build_method
from remedi.evaluation.tables import Table, TableRow
from remedi.methods import common, hparams_file

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
EDIT_WINDOWS = {"ft5": 5}
"""Layers a method edits around its central layer when its hyperparameters list several (the
others keep the width of their packaged ``layers``)."""
DEFAULT_TRACE_KIND = "residual"
DEFAULT_TRACE_WINDOW = 1


def rewrite_score(pre: float, post: float) -> float:
    """How much of the way from ``pre`` to certainty an edit raised a probability."""
    if pre >= 1.0:
        return 0.0
    return (post - pre) / (1.0 - pre)


def erasure_score(pre: float, post: float) -> float:
    """How much of ``pre`` an edit took away, ``(pre - post) / pre``."""
    if pre <= 0.0:
        return 0.0
    return (pre - post) / pre


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

    def swap(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not switch.active:
            return None
        return swapped_log_probs(output, token_id).to(output.dtype)

    head = mt.model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        raise models.UnsupportedModelError(
            f"{type(mt.model).__name__} has no output embeddings (LM head) to hook"
        )
    with tracing.forward_hooks([(head, swap)]):
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


def subject_mask(input_ids: torch.Tensor, variants: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(batch, seq)``: the tokens of every occurrence of any of the token sequences."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for variant in variants:
        length = len(variant)
        if length > input_ids.shape[1]:
            continue
        pattern = torch.tensor(variant, device=input_ids.device)
        windows = input_ids.unfold(1, length, 1)  # (batch, seq - length + 1, length)
        starts = (windows == pattern).all(dim=-1)
        for offset in range(length):
            mask[:, offset : offset + starts.shape[1]] |= starts
    return mask


@contextlib.contextmanager
def noised_subject(
    mt: models.ModelAndTokenizer, prompt: str, subject: str, noise_scale: float, seed: int
) -> Iterator[Switch]:
    """While active, every forward pass adds fresh ``noise_scale`` Gaussian noise (seeded) to
    the embeddings of every occurrence of the subject's tokens (as in ``prompt``, or alone)."""
    switch = Switch()
    variants = _subject_variants(mt, prompt, subject)
    generator = torch.Generator().manual_seed(seed)

    def noise(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not switch.active:
            return None
        mask = subject_mask(inputs[0], variants).unsqueeze(-1)
        draw = torch.randn(output.shape, generator=generator).to(output.device, output.dtype)
        return output + noise_scale * draw * mask.to(output.dtype)

    embeddings: torch.nn.Module = mt.model.get_input_embeddings()
    with tracing.forward_hooks([(embeddings, noise)]):
        yield switch


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
    """The most likely first token under the noised subject, other than o_true's."""
    target_true_first: str
    """o_true's first token as text (what erasure pushes down; the rest follows it)."""
    p_true: float
    p_new: float
    p_noised_target: float
    p_true_noised: float
    """p(o_true | s_noise, r): the fact's probability with the subject noised."""
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
    noised = torch.softmax(logits.double(), dim=-1).mean(dim=0)
    noised[trace.target_id] = -1.0
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
        p_true_noised=target_prob(mt, prompt, case.entity, case.target_true, noise),
        trace=trace,
    )


def evaluation_noise(
    mt: models.ModelAndTokenizer, token_range: tuple[int, int], settings: tracing.TraceSettings
) -> torch.Tensor:
    """The fixed noise samples problems are judged under (the trace's)."""
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
    """Indirect effect of restoring the edited layer at the subject's last token."""
    tracing_fraction: float | None
    """``tracing_effect / (p_clean - p_corrupted)``; None if that difference is 0."""


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
        with noised_subject(
            mt, setup.prompt, setup.subject, settings.noise_scale, settings.seed + setup.case_id
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
        noise = evaluation_noise(mt, token_range, settings)
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
            "editing method (e.g. rome, ft, ft5, memit)"
        )
    target = edit_target(problem, setup)
    request = dataclasses.replace(case, target_new=target, rewrite_prompt=setup.prompt)
    with objective(mt, problem, setup, settings) as switch, method.applied(mt, request):
        switch.active = False
        post = measure(mt, problem, setup, settings)
    pre = pre_probability(problem, setup)
    effect = setup.trace.effect_at(trace_kind, trace_window, layer)
    total = setup.trace.clean_prob - setup.trace.corrupted_prob
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
        tracing_fraction=effect / total if total != 0 else None,
    )


# ---------------------------------------------------------------------------------------------
# Methods at a layer.


def hparams_at_layer(
    method: str, hparams: dict[str, Any], layer: int, num_layers: int
) -> dict[str, Any]:
    """The method's hyperparameters moved to central layer ``layer``: ``layer`` replaced, or
    ``layers`` replaced by the window of the same width (:data:`EDIT_WINDOWS`) around it."""
    moved = dict(hparams)
    if "layer" in moved:
        tracing.layer_window(layer, 1, num_layers)  # checks the range
        moved["layer"] = layer
    elif "layers" in moved:
        width = EDIT_WINDOWS.get(method, len(moved["layers"]) or 1)
        moved["layers"] = tracing.layer_window(layer, width, num_layers)
    else:
        raise errors.UsageError(
            f"the {method} hyperparameters have neither 'layer' nor 'layers'; cannot move the "
            "edit to another layer"
        )
    return moved


def edited_layers_of(hparams: dict[str, Any]) -> list[int]:
    return [hparams["layer"]] if "layer" in hparams else list(hparams["layers"])


def method_at_layer(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    layer: int,
    hparams_dir: Path,
    **options: Any,
) -> tuple[Method, list[int]]:
    """Registered method ``name`` with its packaged hyperparameters moved to ``layer`` (written
    to ``hparams_dir/<name>_L<layer>.json``), and the layers it edits."""
    packaged = io.read_json(hparams_file(name, mt.name), f"{name} hyperparameters")
    moved = hparams_at_layer(name, packaged, layer, mt.num_layers)
    path = Path(hparams_dir) / f"{name}_L{layer}.json"
    io.write_json(path, moved)
    method = build_method(name, mt, cases, resources, hparams_path=path, **options)
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
    correct = [case for case in cases if setups[case.case_id].trace.correct]
    logger.info("%d of %d cases answered correctly; editing those", len(correct), len(cases))

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
                directory / "hparams",
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
    """Regress success on the tracing effect, on the layer (categorical), and on both."""
    problems = {result.problem for result in results}
    if len(problems) != 1:
        raise errors.UsageError(f"regress one problem at a time, got {sorted(problems)}")
    y = np.array([result.success for result in results])
    effect = np.array([[result.tracing_effect] for result in results])
    layers = layer_indicators([result.layer for result in results])
    return Regressions(
        problem=problems.pop(),
        num_edits=len(results),
        tracing=r_squared(y, effect),
        layer=r_squared(y, layers),
        both=r_squared(y, np.column_stack([effect, layers])),
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
        notes=["Least squares with an intercept; the layer enters as a categorical variable."],
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
            "Rewrite score (p_post - p_pre) / (1 - p_pre); erasure score (p_pre - p_post) / p_pre."
        ],
        digits=3,
    )
    return r2, by_layer


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None
