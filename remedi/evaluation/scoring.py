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
from dataclasses import dataclass, field
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
    OWN_PROMPT,
    PADDED_BATCH,
    REFERENCE_GENERATION_BATCH,
    TARGET_SCORINGS,
    EvalCase,
)
from remedi.evaluation.methods import Method, edit_request
from remedi.methods.common import EditRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")
Query = TypeVar("Query", bound=tuple)


def batches(items: Sequence[T], batch_size: int, desc: str) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items``, with a progress bar when there is more than one."""
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 2, leave=False):
        yield items[start : start + batch_size]


def _per_case_groups(
    mt: models.ModelAndTokenizer, method: Method, queries: Sequence[tuple]
) -> Iterator[tuple[contextlib.AbstractContextManager[Any], list[int]]]:
    """Indices of queries that may share a forward pass, with the weight edit they run under.

    A method that edits weights gets one group per case (in order of first appearance); any other
    method gets one group of all queries. A case is its id and its edit request: two cases with
    the same id and another target are two groups, each under its own edit.
    """
    if not method.edits_weights:
        yield contextlib.nullcontext(), list(range(len(queries)))
        return
    groups: dict[tuple[int, EditRequest], list[int]] = {}
    cases: dict[tuple[int, EditRequest], EvalCase] = {}
    for index, query in enumerate(queries):
        case = query[0]
        key = (case.case_id, edit_request(case))
        groups.setdefault(key, []).append(index)
        cases.setdefault(key, case)
    for key, indices in groups.items():
        yield method.applied(mt, cases[key]), indices


def _run_grouped(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[Query],
    run: Callable[[Sequence[Query]], list[T]],
) -> list[T]:
    """``run`` over the queries group by group (see :func:`_per_case_groups`), in query order.

    No queries (a method that applies to none of the cases): nothing runs, no results.
    """
    if not queries:
        return []
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
    are scored under teacher forcing, in batches of ``batch_size`` sequences, with the method's
    edit attached; the LM head runs only where a target token comes next, and the targets of a
    prompt that are one token long are read from one sequence (see :func:`_scoring_rows`). ``scoring`` (:data:`~remedi.evaluation.cases.TARGET_SCORINGS`) picks the mean of
    the target tokens' log-probabilities (ROME), their sum (the whole target), or the first one
    (REMEDI's reference).
    """
    if scoring not in TARGET_SCORINGS:
        raise errors.UsageError(
            f"unknown scoring {scoring!r}; choose one of {', '.join(TARGET_SCORINGS)}"
        )

    def run(group: Sequence[tuple[EvalCase, str, str]]) -> list[float]:
        rows, counts = _scoring_rows(mt.tokenizer, method, group, scoring)
        totals = torch.zeros(len(group), dtype=torch.float64)
        for indices in _similar_length_batches([len(row.ids) for row in rows], batch_size, desc):
            totals += _score_rows(mt, method, [rows[index] for index in indices], len(group))
        return (totals / counts if scoring == "mean" else totals).tolist()

    return np.asarray(_run_grouped(mt, method, queries, run), dtype=np.float64)


def _similar_length_batches(
    lengths: Sequence[int], batch_size: int, desc: str
) -> Iterator[list[int]]:
    """Indices of items in batches of similar ``lengths`` (less padding), with progress.

    For computations where an item's result does not depend on the others in its batch.
    """
    index_batches = precompute.length_sorted_batches(lengths, batch_size)
    yield from tqdm(index_batches, desc=desc, disable=len(index_batches) < 2, leave=False)


@dataclass
class _ScoringRow:
    """One sequence to run: a rewritten prompt about a case, maybe followed by target tokens,
    and the ``(query, position, token)`` log-probabilities queries read from it."""

    case: EvalCase
    prompt: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    reads: list[tuple[int, int, int]] = field(default_factory=list)


def _scoring_rows(
    tokenizer: precompute.Tokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str, str]],
    scoring: str,
) -> tuple[list[_ScoringRow], torch.Tensor]:
    """The sequences that score ``(case, prompt, target)`` queries, and each query's number of
    scored target tokens.

    A query reads, at each position before one of its target tokens (the tokens of
    "prompt target" that start after the prompt), that token's log-probability. Its sequence
    is "prompt target" without the last target token, which no position reads as an input;
    queries with the same case, prompt and sequence share it: a prompt whose targets are one
    token long runs once for all of them.
    """
    prompts = [method.rewrite(case, prompt) for case, prompt, _ in queries]
    texts = [f"{prompt} {target}" for prompt, (_, _, target) in zip(prompts, queries, strict=True)]
    encoded = tokenizer(texts, return_offsets_mapping=True)
    rows: dict[tuple[int, str, tuple[int, ...]], _ScoringRow] = {}
    counts = []
    for index, ((case, _, _), prompt) in enumerate(zip(queries, prompts, strict=True)):
        ids, offsets = encoded["input_ids"][index], encoded["offset_mapping"][index]
        targets = [
            position
            for position, (start, end) in enumerate(offsets)
            if position > 0 and start >= len(prompt) and end > start
        ]
        if not targets:
            raise errors.SampleError(
                f"target of query {texts[index]!r} has no token after its prompt; give the case "
                "a non-empty target"
            )
        if scoring == "first":
            targets = targets[:1]
        key = (id(case), prompt, tuple(ids[: targets[-1]]))
        if key not in rows:
            rows[key] = _ScoringRow(case, prompt, ids[: targets[-1]], offsets[: targets[-1]])
        rows[key].reads += [(index, position - 1, ids[position]) for position in targets]
        counts.append(len(targets))
    return list(rows.values()), torch.tensor(counts, dtype=torch.float64)


@torch.no_grad()
def _score_rows(
    mt: models.ModelAndTokenizer,
    method: Method,
    rows: Sequence[_ScoringRow],
    num_queries: int,
) -> torch.Tensor:
    """One forward pass over ``rows``, with the method's edit: the sum of the log-probabilities
    each query reads there, (num_queries,) float64 on the CPU."""
    device = models.determine_device(mt.model)
    inputs, offsets = precompute.pad_token_rows(
        mt.tokenizer,
        {
            "input_ids": [row.ids for row in rows],
            "attention_mask": [[1] * len(row.ids) for row in rows],
            "offset_mapping": [row.offsets for row in rows],
        },
        device,
        padding_side="right",
    )
    reads = [(index, *read) for index, row in enumerate(rows) for read in row.reads]
    row_index, queries, positions, tokens = torch.tensor(reads, dtype=torch.long).unbind(dim=1)
    read = torch.zeros(inputs.input_ids.shape, dtype=torch.bool)
    read[row_index, positions] = True
    # The LM head runs only where a target token comes next; its rows come position by position.
    logits_row = read.flatten().cumsum(0).view_as(read) - 1
    cases, prompts = [row.case for row in rows], [row.prompt for row in rows]
    with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
        logits = models.logits_at(mt.model, inputs, read.to(device))
    # float32 at least (half-precision logits lose the small probabilities), wider if the model is.
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    values = log_probs[logits_row[row_index, positions].to(device), tokens.to(device)]
    totals = torch.zeros(num_queries, dtype=torch.float64)
    return totals.index_add_(0, queries, values.double().cpu())


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
        lengths = [len(text) for text in rewritten]  # characters: no extra tokenizer pass
        for indices in _similar_length_batches(lengths, batch_size, desc):
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


def new_token_budgets(
    prompt_lengths: Sequence[int], max_length: int, generation_length: str = OWN_PROMPT
) -> list[int]:
    """Tokens to sample after each prompt (of ``prompt_lengths`` tokens, in query order) so that
    a text is ``max_length`` tokens long as ``generation_length`` counts it (see
    :data:`remedi.evaluation.cases.GENERATION_LENGTHS`); at least one each.

    ``padded-batch`` counts as the reference's ``generate(max_length=...)`` on its left-padded
    batches of 16 consecutive samples (its ``remedi/benchmarks.py:879,923-924,945-966``; the
    padding is part of the input's length): every text of a batch gets ``max_length`` minus its
    longest prompt, whatever our own batches are.
    """
    if generation_length == OWN_PROMPT:
        return [max(1, max_length - length) for length in prompt_lengths]
    if generation_length == PADDED_BATCH:
        budgets = []
        for start in range(0, len(prompt_lengths), REFERENCE_GENERATION_BATCH):
            group = prompt_lengths[start : start + REFERENCE_GENERATION_BATCH]
            budgets += [max(1, max_length - max(group))] * len(group)
        return budgets
    raise errors.UsageError(f"unknown generation length {generation_length!r}")


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
    generation_length: str = OWN_PROMPT,
) -> list[str]:
    """Sample a continuation of each ``(case, prompt)`` with the method attached.

    Each text is the prompt as :meth:`Method.visible` shows it followed by the sampled tokens,
    ``max_length`` tokens in all as ``generation_length`` counts them (:func:`new_token_budgets`:
    by default the visible prompt's tokens included, sampling through end-of-text, as in ROME;
    ``padded-batch``: the reference's Bias in Bios count over the model's input prompts, ending at
    end-of-text). Top-k sampling (:class:`TopKSampler`; ``top_k=1`` is greedy), each text seeded
    from ``(seed, stream, its index in queries)``, so that it does not depend on ``batch_size`` or
    on the other queries, and the global random state is left alone. Queries are batched with
    left padding in order of prompt length (less padding) and returned in the order given.
    """
    tokenizer = mt.tokenizer
    if generation_length == PADDED_BATCH:  # the model's input, as the reference's inputs
        shown = [method.rewrite(case, prompt) for case, prompt in queries]
    else:
        shown = [method.visible(case, prompt) for case, prompt in queries]
    lengths = [len(ids) for ids in tokenizer(shown)["input_ids"]] if queries else []
    budgets = new_token_budgets(lengths, max_length, generation_length)
    stop_at_end = generation_length == PADDED_BATCH
    seeded = [
        (case, prompt, _text_seed(seed, stream, index), budget)
        for index, ((case, prompt), budget) in enumerate(zip(queries, budgets, strict=True))
    ]

    def run(group: Sequence[tuple[EvalCase, str, int, int]]) -> list[str]:
        rewritten = [method.rewrite(case, prompt) for case, prompt, _, _ in group]
        texts: list[str] = [""] * len(group)
        lengths = [len(text) for text in rewritten]  # characters: no extra tokenizer pass
        for indices in _similar_length_batches(lengths, batch_size, desc):
            batch = [group[index] for index in indices]
            batch_texts = _generate_batch(mt, method, batch, top_k, stop_at_end)
            for index, text in zip(indices, batch_texts, strict=True):
                texts[index] = text
        return texts

    return _run_grouped(mt, method, seeded, run)


@torch.no_grad()
def _generate_batch(
    mt: models.ModelAndTokenizer,
    method: Method,
    batch: Sequence[tuple[EvalCase, str, int, int]],
    top_k: int,
    stop_at_end: bool = False,
) -> list[str]:
    """Texts of one batch: each row samples its budget of new tokens (the tuples' last item);
    with ``stop_at_end``, a row's text ends at its first end-of-text token."""
    device = models.determine_device(mt.model)
    tokenizer = mt.tokenizer
    limit = max_positions(mt.model)
    cases = [case for case, _, _, _ in batch]
    prompts = [method.rewrite(case, prompt) for case, prompt, _, _ in batch]
    visible = [method.visible(case, prompt) for case, prompt, _, _ in batch]
    new_tokens = [budget for _, _, _, budget in batch]
    inputs, offsets = precompute.tokenize(tokenizer, prompts, device, padding_side="left")
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
    end_of_text = tokenizer.eos_token_id if stop_at_end else None
    # Greedy decoding over scores where only the sampled token is possible: top-k sampling.
    sampler = TopKSampler(top_k, [text_seed for _, _, text_seed, _ in batch])
    with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
        generate: Any = mt.model.generate
        outputs = generate(
            **inputs,
            do_sample=False,
            logits_processor=transformers.LogitsProcessorList([sampler] if top_k > 1 else []),
            num_beams=1,
            use_cache=True,
            max_new_tokens=max_new_tokens,
            # ROME samples through end-of-text (removed below); the reference's Bias in Bios
            # generation stops there (generate's default, the model's end-of-text token).
            eos_token_id=end_of_text,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = []
    for row, (shown, wanted) in enumerate(zip(visible, new_tokens, strict=True)):
        sampled = outputs[row, width : width + wanted].tolist()
        if end_of_text is not None and end_of_text in sampled:
            sampled = sampled[: sampled.index(end_of_text)]
        continuation = str(tokenizer.decode(sampled, skip_special_tokens=True))
        texts.append(clean_generated_text(shown + continuation))
    return texts
