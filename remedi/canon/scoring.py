"""Negative log-likelihoods of suffixes and texts, the training losses, and the seed's scores.

Following Hewitt et al. (``utils.py``, ``evaluate.py``): the prefix and the suffix are
tokenized separately and concatenated; a suffix is scored on its own tokens given everything
before; a whole text on every token after its first. Training averages each example's loss
over its suffix tokens; evaluation sums it (the seed's ``example`` normalisation) and compares
it with the task's threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import transformers

from remedi import errors
from remedi.data.canonical import CanonicalExample

logger = logging.getLogger(__name__)


def model_max_length(model: torch.nn.Module, configured: int | None = None) -> int:
    """The longest row the model takes: ``configured``, else the model's positions (<= 2048)."""
    if configured is not None:
        return configured
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return min(value, 2048)
    return 1024


@dataclass
class Tokenized:
    """Rows of token ids and, per row, the first scored position (``score_from``)."""

    token_ids: list[list[int]]
    score_from: list[int]


def tokenize(
    tokenizer: transformers.PreTrainedTokenizerBase,
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    max_length: int,
) -> Tokenized:
    """Prefix tokens (with special tokens) + suffix tokens; an empty prefix scores a whole text.

    Rows longer than ``max_length`` lose tokens from the start of the prefix (texts: from the
    end), so that the scored suffix stays whole; a suffix longer than the context on its own keeps
    its first ``max_length - 1`` tokens after the prefix's last one.
    """
    token_ids, score_from = [], []
    shortened = 0
    for prefix, suffix in zip(prefixes, suffixes, strict=True):
        if prefix:
            prefix_ids = list(tokenizer(prefix)["input_ids"])
            suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
            if len(prefix_ids) + len(suffix_ids) > max_length:
                shortened += 1
                # A suffix longer than the model's context keeps its start (and one prefix token).
                suffix_ids = suffix_ids[: max_length - 1]
                prefix_ids = prefix_ids[len(prefix_ids) + len(suffix_ids) - max_length :]
            token_ids.append(prefix_ids + suffix_ids)
            score_from.append(max(1, len(prefix_ids)))
        else:
            ids = list(tokenizer(suffix)["input_ids"])
            if len(ids) > max_length:
                shortened += 1
                ids = ids[:max_length]
            token_ids.append(ids)
            score_from.append(1)
    if shortened:
        logger.info("%d of %d rows shortened to %d tokens", shortened, len(token_ids), max_length)
    return Tokenized(token_ids, score_from)


def sequence_nll(
    model: torch.nn.Module, rows: Tokenized, pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of each row's scored tokens, and how many tokens were scored (right padding)."""
    length = max(len(ids) for ids in rows.token_ids)
    batch = len(rows.token_ids)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros(batch, length, dtype=torch.long)
    scored = torch.zeros(batch, length, dtype=torch.bool)
    for row, (ids, start) in enumerate(zip(rows.token_ids, rows.score_from, strict=True)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        scored[row, start : len(ids)] = True
    input_ids, attention, scored = input_ids.to(device), attention.to(device), scored.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    # Position t predicts token t + 1.
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_nll = -log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = scored[:, 1:]
    return (token_nll * mask).sum(dim=-1), mask.sum(dim=-1)


def example_nll(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    examples: Sequence[CanonicalExample],
    max_length: int,
    device: torch.device,
    second: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_nll` of each example's suffix (``second``: its ``suffix2``)."""
    suffixes = []
    for example in examples:
        suffix = example.suffix2 if second else example.suffix
        if suffix is None:
            raise errors.UsageError("pair scoring needs examples with suffix2 (a pair task's file)")
        suffixes.append(suffix)
    rows = tokenize(tokenizer, [example.prefix for example in examples], suffixes, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return sequence_nll(model, rows, pad, device)


def training_loss(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    examples: Sequence[CanonicalExample],
    loss_type: str,
    max_length: int,
    device: torch.device,
) -> torch.Tensor:
    """The seed's training loss for a batch: per-token-averaged suffix NLL, by loss type.

    ``good``: its mean; ``bad``: minus its mean; ``balance``: the mean absolute difference
    between the two suffixes; ``good-v-bad``: the mean difference (first minus second).

    The pair losses are per example at any batch size. The seed's ``score_pair_suffix``
    (``utils.py:52-72``) divides each example's summed NLL, shape ``(batch,)``, by token counts of
    shape ``(batch, 1)``, so it sums a ``(batch, batch)`` broadcast, ``nll[j] / count[i]`` over all
    ``i, j``, divided by the batch size; the two agree at batch size 1, which its sweep configs
    use (``benchmarks/parity/canonical.py`` rebuilds its loss from ours exactly).
    """
    nll, count = example_nll(model, tokenizer, examples, max_length, device)
    average = nll / count.clamp(min=1)
    if loss_type == "good":
        return average.mean()
    if loss_type == "bad":
        return -average.mean()
    nll2, count2 = example_nll(model, tokenizer, examples, max_length, device, second=True)
    difference = average - nll2 / count2.clamp(min=1)
    if loss_type == "balance":
        return difference.abs().mean()
    if loss_type == "good-v-bad":
        return difference.mean()
    raise errors.UsageError(
        f"unknown loss type {loss_type!r}; allowed: good, bad, balance, good-v-bad"
    )


@torch.no_grad()
def example_scores(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    examples: Sequence[CanonicalExample],
    loss_type: str,
    max_length: int,
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """Each evaluation example's score (summed over suffix tokens); above the threshold fails.

    ``good``: NLL of the suffix; ``bad``: minus it; ``balance``: |NLL1 - NLL2|;
    ``good-v-bad``: NLL1 - NLL2.
    """
    scores = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        nll, _ = example_nll(model, tokenizer, batch, max_length, device)
        if loss_type == "good":
            scores.append(nll)
        elif loss_type == "bad":
            scores.append(-nll)
        else:
            nll2, _ = example_nll(model, tokenizer, batch, max_length, device, second=True)
            scores.append((nll - nll2).abs() if loss_type == "balance" else nll - nll2)
    return torch.cat(scores).cpu() if scores else torch.zeros(0)


@torch.no_grad()
def mean_nll(
    model: torch.nn.Module,
    tokenizer: transformers.PreTrainedTokenizerBase,
    examples: Sequence[CanonicalExample],
    max_length: int,
    device: torch.device,
    batch_size: int,
    per: Literal["token", "example"],
) -> float:
    """The suffix NLL over ``examples`` averaged per scored token (``per="token"``, the seed's
    ``token`` normalisation) or per example (``"example"``, the seed's ``example``: each hard
    negative's summed suffix NLL); NaN for no examples."""
    total, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        nll, count = example_nll(
            model, tokenizer, examples[start : start + batch_size], max_length, device
        )
        total += float(nll.sum())
        tokens += int(count.sum())
    denominator = tokens if per == "token" else len(examples)
    return total / denominator if denominator else float("nan")
