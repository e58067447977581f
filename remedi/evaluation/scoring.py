"""Batched LM computations with a method attached: target scores, top-1 predictions, samples.

Each function takes queries about cases, lets the method rewrite each prompt, and runs the model
in batches with the method's hidden-state edit attached. For a method that edits weights, the
queries are grouped by case and each group runs under that case's weight edit (restored after).
"""

from __future__ import annotations

import contextlib
import logging
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from remedi import errors, models, precompute
from remedi.evaluation.cases import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TARGET_SCORING,
    GENERATION_MAX_LENGTH,
    GENERATION_TOP_K,
    TARGET_SCORINGS,
    EvalCase,
)
from remedi.evaluation.methods import Method

logger = logging.getLogger(__name__)

T = TypeVar("T")
Query = TypeVar("Query", bound=tuple)


def _per_case_groups(
    mt: models.ModelAndTokenizer, method: Method, queries: Sequence[tuple]
) -> Iterator[tuple[contextlib.AbstractContextManager[Any], list[int]]]:
    """Indices of queries that may share a forward pass, with the weight edit they run under.

    A method that edits weights gets one group per case (in order of first appearance); any other
    method gets one group of all queries.
    """
    if not method.edits_weights:
        yield contextlib.nullcontext(), list(range(len(queries)))
        return
    groups: dict[int, list[int]] = {}
    cases: dict[int, EvalCase] = {}
    for index, query in enumerate(queries):
        case = query[0]
        groups.setdefault(case.case_id, []).append(index)
        cases[case.case_id] = case
    for case_id, indices in groups.items():
        yield method.applied(mt, cases[case_id]), indices


def _run_grouped(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[Query],
    run: Callable[[Sequence[Query]], list[T]],
) -> list[T]:
    """``run`` over the queries group by group (see :func:`_per_case_groups`), in query order."""
    results: dict[int, T] = {}
    for edit, indices in _per_case_groups(mt, method, queries):
        with edit:
            outputs = run([queries[index] for index in indices])
        results.update(zip(indices, outputs, strict=True))
    return [results[index] for index in range(len(queries))]


def target_log_probs(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str, str]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    scoring: str = DEFAULT_TARGET_SCORING,
    desc: str = "score targets",
) -> np.ndarray:
    """Score of ``target`` after ``prompt``, for ``(case, prompt, target)`` queries (float64).

    Each prompt is rewritten by the method and followed by ``" " + target``; the target's tokens
    are scored under teacher forcing in one forward pass per batch, with the method's edit
    attached. ``scoring`` (:data:`~remedi.evaluation.cases.TARGET_SCORINGS`) picks the mean of
    the target tokens' log-probabilities (ROME), their sum (the whole target), or the first one
    (REMEDI's reference).
    """
    if scoring not in TARGET_SCORINGS:
        raise errors.UsageError(
            f"unknown scoring {scoring!r}; choose one of {', '.join(TARGET_SCORINGS)}"
        )

    def run(group: Sequence[tuple[EvalCase, str, str]]) -> list[float]:
        texts = [f"{method.rewrite(case, prompt)} {target}" for case, prompt, target in group]
        scores: list[float] = [0.0] * len(group)
        for indices in _similar_length_batches(texts, batch_size, desc):
            batch_scores = _score_batch(mt, method, [group[index] for index in indices], scoring)
            for index, score in zip(indices, batch_scores.tolist(), strict=True):
                scores[index] = score
        return scores

    return np.asarray(_run_grouped(mt, method, queries, run), dtype=np.float64)


def _similar_length_batches(
    texts: Sequence[str], batch_size: int, desc: str
) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of similar length (less padding), with progress.

    For computations where a text's result does not depend on the others in its batch.
    Characters stand in for tokens: sorting needs no extra pass of the tokenizer.
    """
    index_batches = precompute.length_sorted_batches([len(text) for text in texts], batch_size)
    yield from tqdm(index_batches, desc=desc, disable=len(index_batches) < 2, leave=False)


@torch.no_grad()
def _score_batch(
    mt: models.ModelAndTokenizer,
    method: Method,
    batch: Sequence[tuple[EvalCase, str, str]],
    scoring: str,
) -> torch.Tensor:
    device = models.determine_device(mt.model)
    cases = [case for case, _, _ in batch]
    prompts = [method.rewrite(case, prompt) for case, prompt, _ in batch]
    texts = [f"{prompt} {target}" for prompt, (_, _, target) in zip(prompts, batch, strict=True)]
    inputs, offsets = precompute.tokenize(mt.tokenizer, texts, device, padding_side="right")
    prompt_chars = torch.tensor([len(prompt) for prompt in prompts])
    is_target = (
        (offsets[..., 0] >= prompt_chars[:, None])
        & (offsets[..., 1] > offsets[..., 0])
        & inputs.attention_mask.cpu().bool()
    )
    if not bool(is_target.any(dim=-1).all()):
        bad = int((~is_target.any(dim=-1)).nonzero()[0])
        raise errors.SampleError(
            f"target of query {texts[bad]!r} has no token after its prompt; give the case a "
            "non-empty target"
        )
    if scoring == "first":
        is_target &= is_target.int().cumsum(dim=-1).eq(1)
    # Position t predicts token t + 1: the LM head runs only where a target token comes next.
    predicts_target = torch.zeros_like(is_target)
    predicts_target[:, :-1] = is_target[:, 1:]
    predicts_target = predicts_target.to(device)
    with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
        logits = models.logits_at(mt.model, inputs, predicts_target)
    # float32 at least (half-precision logits lose the small probabilities), wider if the model is.
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    targets = inputs.input_ids[is_target.to(device)]
    token_log_probs = log_probs.gather(-1, targets[:, None]).squeeze(-1).double()
    rows = predicts_target.nonzero()[:, 0]
    total = torch.zeros(len(batch), dtype=torch.float64, device=device)
    total.index_add_(0, rows, token_log_probs)
    if scoring == "mean":
        total = total / predicts_target.sum(dim=-1)
    return total.cpu()


def next_token_predictions(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str = "predict next tokens",
) -> np.ndarray:
    """Top-1 next token id after each ``(case, prompt)``, with the method attached."""

    @torch.no_grad()
    def run(group: Sequence[tuple[EvalCase, str]]) -> list[int]:
        device = models.determine_device(mt.model)
        rewritten = [method.rewrite(case, prompt) for case, prompt in group]
        predictions: list[int] = [0] * len(group)
        for indices in _similar_length_batches(rewritten, batch_size, desc):
            cases = [group[index][0] for index in indices]
            prompts = [rewritten[index] for index in indices]
            inputs, offsets = precompute.tokenize(
                mt.tokenizer, prompts, device, padding_side="right"
            )
            last = precompute.last_token_positions(inputs.attention_mask)
            positions = torch.arange(inputs.input_ids.shape[1], device=device) == last[:, None]
            with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
                logits = models.logits_at(mt.model, inputs, positions)
            for index, prediction in zip(indices, logits.argmax(dim=-1).tolist(), strict=True):
                predictions[index] = prediction
        return predictions

    return np.asarray(_run_grouped(mt, method, queries, run), dtype=np.int64)


def max_positions(model: transformers.PreTrainedModel) -> int | None:
    """The model's maximum sequence length, if its config says."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _text_seed(seed: int, stream: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


class TopKSampler(transformers.LogitsProcessor):
    """Top-k sampling (temperature 1) as a logits processor for greedy ``generate``.

    Row ``i``'s next token is drawn from the softmax over its ``top_k`` largest scores with a
    uniform number from its own generator, seeded with ``seeds[i]``; the returned scores leave
    only that token possible, so greedy decoding picks it. The distribution is ``generate``'s
    top-k sampling, but a step draws one number per row instead of one per vocabulary entry
    (most of a step's time for a small model on a CPU), a text does not depend on the others in
    its batch, and the global random state is left alone. (Ties at the k-th largest score keep
    exactly k tokens, where ``generate`` keeps every tied one.)
    """

    def __init__(self, top_k: int, seeds: Sequence[int]):
        self.top_k = top_k
        # On the CPU whatever the model's device: the same seed draws the same numbers anywhere.
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        values, indices = scores.topk(min(self.top_k, scores.shape[-1]), dim=-1)
        cumulative = torch.softmax(values.double(), dim=-1).cumsum(dim=-1)
        uniform = torch.stack(
            [
                torch.rand((), dtype=torch.float64, generator=generator)
                for generator in self.generators
            ]
        ).to(scores.device)
        choice = (cumulative < uniform[:, None]).sum(dim=-1, keepdim=True)
        choice = choice.clamp(max=values.shape[-1] - 1)  # a cumulative sum that rounds below 1
        only_choice = torch.full_like(scores, float("-inf"))
        return only_choice.scatter_(-1, indices.gather(-1, choice), 0.0)  # type: ignore[return-value]


def clean_generated_text(text: str) -> str:
    """ROME's post-processing of generated text: NFKD, paragraph breaks to spaces."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def generate_texts(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str]],
    max_length: int = GENERATION_MAX_LENGTH,
    top_k: int = GENERATION_TOP_K,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stream: int = 0,
    desc: str = "generate",
) -> list[str]:
    """Sample a continuation of each ``(case, prompt)`` with the method attached.

    Each text is the prompt as :meth:`Method.visible` shows it followed by the sampled tokens,
    ``max_length`` tokens in all (the visible prompt's tokens included, as in ROME). Top-k
    sampling (:class:`TopKSampler`; ``top_k=1`` is greedy), each text seeded from ``(seed,
    stream, its index in queries)``, so that it does not depend on ``batch_size`` or on the
    other queries, and the global random state is left alone. Queries are batched with left
    padding in order of prompt length (less padding) and returned in the order given.
    """
    seeded = [
        (case, prompt, _text_seed(seed, stream, index))
        for index, (case, prompt) in enumerate(queries)
    ]

    def run(group: Sequence[tuple[EvalCase, str, int]]) -> list[str]:
        rewritten = [method.rewrite(case, prompt) for case, prompt, _ in group]
        texts: list[str] = [""] * len(group)
        for indices in _similar_length_batches(rewritten, batch_size, desc):
            batch = [group[index] for index in indices]
            batch_texts = _generate_batch(mt, method, batch, max_length, top_k)
            for index, text in zip(indices, batch_texts, strict=True):
                texts[index] = text
        return texts

    return _run_grouped(mt, method, seeded, run)


@torch.no_grad()
def _generate_batch(
    mt: models.ModelAndTokenizer,
    method: Method,
    batch: Sequence[tuple[EvalCase, str, int]],
    max_length: int,
    top_k: int,
) -> list[str]:
    device = models.determine_device(mt.model)
    tokenizer = mt.tokenizer
    limit = max_positions(mt.model)
    cases = [case for case, _, _ in batch]
    prompts = [method.rewrite(case, prompt) for case, prompt, _ in batch]
    visible = [method.visible(case, prompt) for case, prompt, _ in batch]
    inputs, offsets = precompute.tokenize(tokenizer, prompts, device, padding_side="left")
    visible_lengths = [len(ids) for ids in tokenizer(visible)["input_ids"]]
    new_tokens = [max(1, max_length - length) for length in visible_lengths]
    width = inputs.input_ids.shape[1]
    max_new_tokens = max(new_tokens)
    if limit is not None and width + max_new_tokens > limit:
        # Every row's positions must stay below the model's limit.
        max_new_tokens = max(1, limit - width)
        cut = sum(wanted > max_new_tokens for wanted in new_tokens)
        if cut:
            logger.warning(
                "%d of %d texts cut to %d new tokens: the model has only %d positions",
                cut,
                len(new_tokens),
                max_new_tokens,
                limit,
            )
    # Greedy decoding over scores where only the sampled token is possible: top-k sampling.
    sampler = TopKSampler(top_k, [text_seed for _, _, text_seed in batch])
    with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
        generate: Any = mt.model.generate
        outputs = generate(
            **inputs,
            do_sample=False,
            logits_processor=transformers.LogitsProcessorList([sampler] if top_k > 1 else []),
            num_beams=1,
            use_cache=True,
            max_new_tokens=max_new_tokens,
            eos_token_id=None,  # ROME samples through end-of-text; it is removed below
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = []
    for row, (shown, wanted) in enumerate(zip(visible, new_tokens, strict=True)):
        sampled = outputs[row, width : width + wanted]
        continuation = str(tokenizer.decode(sampled, skip_special_tokens=True))
        texts.append(clean_generated_text(shown + continuation))
    return texts
