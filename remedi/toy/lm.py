"""The toy LM: a small transformer of a chosen family, trained from scratch to know the world.

:data:`ARCHITECTURES` maps an architecture name to a function building a ``transformers`` config
of that family from one set of sizes (:class:`LMSettings`), so every family the models module
supports can be exercised with a model that knows facts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from remedi import errors
from remedi.toy.corpus import Document, FactPrompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMSettings:
    """Size and training schedule of a toy LM."""

    arch: str = "gpt2"
    num_layers: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    max_positions: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    max_seconds: float | None = None
    """Stop training after this many seconds (the schedule still ends at ``epochs``)."""
    num_threads: int | None = 1
    """torch CPU threads while building (``None``: torch's default). The matrices are tiny, so
    more threads gain little, and on a machine shared with other processes a multi-threaded run
    was measured 18x slower per step than a single-threaded one."""


# The config names of LMSettings' sizes: GPT-2's (GPT-2, GPT-J) and the newer ones (NeoX, Llama).
_GPT2_NAMES = {
    "max_positions": "n_positions",
    "hidden_size": "n_embd",
    "num_layers": "n_layer",
    "num_heads": "n_head",
}
_DECODER_NAMES = {
    "max_positions": "max_position_embeddings",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
}
_NO_GPT2_DROPOUT: dict[str, Any] = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _sizes(s: LMSettings, names: dict[str, str]) -> dict[str, Any]:
    """``s``'s sizes under a config's ``names`` for them."""
    return {key: getattr(s, field) for field, key in names.items()}


def _special_tokens(special_id: int) -> dict[str, Any]:
    """The toy tokenizer's one special token serves as BOS, EOS and padding."""
    return dict(bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)


def _gpt2_config(s: LMSettings, vocab_size: int, special_id: int) -> transformers.PretrainedConfig:
    return transformers.GPT2Config(
        vocab_size=vocab_size,
        **_sizes(s, _GPT2_NAMES),
        **_NO_GPT2_DROPOUT,
        **_special_tokens(special_id),
        tie_word_embeddings=True,
    )


def _gptj_config(s: LMSettings, vocab_size: int, special_id: int) -> transformers.PretrainedConfig:
    return transformers.GPTJConfig(
        vocab_size=vocab_size,
        **_sizes(s, _GPT2_NAMES),
        **_NO_GPT2_DROPOUT,
        rotary_dim=s.hidden_size // s.num_heads,
        **_special_tokens(special_id),
        tie_word_embeddings=False,
    )


def _neox_config(s: LMSettings, vocab_size: int, special_id: int) -> transformers.PretrainedConfig:
    return transformers.GPTNeoXConfig(
        vocab_size=vocab_size,
        **_sizes(s, _DECODER_NAMES),
        intermediate_size=4 * s.hidden_size,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        **_special_tokens(special_id),
        tie_word_embeddings=False,
    )


def _llama_config(s: LMSettings, vocab_size: int, special_id: int) -> transformers.PretrainedConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        **_sizes(s, _DECODER_NAMES),
        intermediate_size=4 * s.hidden_size,
        num_key_value_heads=s.num_heads,
        **_special_tokens(special_id),
        tie_word_embeddings=False,
    )


ConfigBuilder = Callable[[LMSettings, int, int], transformers.PretrainedConfig]

ARCHITECTURES: dict[str, ConfigBuilder] = {
    "gpt2": _gpt2_config,
    "gptj": _gptj_config,
    "neox": _neox_config,
    "llama": _llama_config,
}
"""Registry: architecture name -> builder of its ``transformers`` config."""


def build_model(
    settings: LMSettings, tokenizer: transformers.PreTrainedTokenizerBase, seed: int
) -> transformers.PreTrainedModel:
    """A randomly initialised causal LM of ``settings.arch`` for ``tokenizer``'s vocabulary."""
    if settings.arch not in ARCHITECTURES:
        raise errors.UsageError(
            f"unknown toy architecture {settings.arch!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    special_id = tokenizer.eos_token_id
    assert isinstance(special_id, int)
    config = ARCHITECTURES[settings.arch](settings, len(tokenizer), special_id)
    seed_everything(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use ``num_threads`` torch CPU threads inside the block (``None``: leave as is)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingResult:
    seconds: float
    epochs_completed: float
    steps: int
    final_loss: float


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of document indices, each of similar lengths (little padding)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(
    documents: Sequence[list[int]],
    indices: Sequence[int],
    pad_id: int,
    scored_from: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, mask and labels; tokens before ``scored_from[i]`` get no loss."""
    width = max(len(documents[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    for row, index in enumerate(indices):
        tokens = torch.tensor(documents[index])
        input_ids[row, : len(tokens)] = tokens
        attention_mask[row, : len(tokens)] = 1
        first = scored_from[index] if scored_from is not None else 0
        labels[row, first : len(tokens)] = tokens[first:]
    return input_ids, attention_mask, labels


def tokenize_documents(
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: Sequence[str | Document],
    max_positions: int,
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each text followed by the end-of-text token (no BOS, as GPT-2 prompts),
    and the index of each document's first scored token (see :class:`Document`)."""
    eos = tokenizer.eos_token_id
    assert isinstance(eos, int)
    documents = [Document(t) if isinstance(t, str) else t for t in texts]
    encoded = tokenizer(
        [d.text for d in documents], add_special_tokens=False, return_offsets_mapping=True
    )
    token_ids = [[*ids, eos] for ids in encoded["input_ids"]]
    scored_from = [
        next((i for i, (_, end) in enumerate(offsets) if end > d.scored_from), len(offsets))
        for d, offsets in zip(documents, encoded["offset_mapping"], strict=True)
    ]
    too_long = [len(d) for d in token_ids if len(d) > max_positions]
    if too_long:
        raise errors.UsageError(
            f"{len(too_long)} training documents are longer than the model's {max_positions} "
            f"positions (longest {max(too_long)} tokens); raise max_positions"
        )
    return token_ids, scored_from


def train_lm(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: Sequence[str | Document],
    settings: LMSettings,
    seed: int,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Train ``model`` on ``texts`` with AdamW, linear warmup and cosine decay.

    Every token is predicted (names, templates and values), so the LM also learns to write
    biographies, which the generation metrics need. ``on_epoch_end(epoch, seconds)`` is called
    after each epoch (in eval mode; it may evaluate the model).
    """
    documents, scored_from = tokenize_documents(tokenizer, texts, settings.max_positions)
    lengths = [len(d) for d in documents]
    pad_id = tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    rng = random.Random(seed)
    steps_per_epoch = math.ceil(len(documents) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = max(1, int(total_steps * settings.warmup_fraction))

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return settings.min_lr_fraction + (1 - settings.min_lr_fraction) * cosine

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    start = time.monotonic()
    step = 0
    running_loss = float("nan")
    stopped_early = False
    progress = tqdm(
        total=total_steps, desc=f"training toy {settings.arch}", unit="step", mininterval=1.0
    )
    try:
        for epoch in range(settings.epochs):
            for indices in _batches(lengths, settings.batch_size, rng):
                input_ids, attention_mask, labels = _collate(
                    documents, indices, pad_id, scored_from
                )
                loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                value = loss.item()
                running_loss = (
                    value if math.isnan(running_loss) else 0.95 * running_loss + 0.05 * value
                )
                progress.update(1)
                if step % 20 == 0:
                    progress.set_postfix(loss=f"{running_loss:.3f}")
            if on_epoch_end is not None:
                model.eval()
                on_epoch_end(epoch, time.monotonic() - start)
                model.train()
            if settings.max_seconds is not None and time.monotonic() - start > settings.max_seconds:
                stopped_early = True
                break
    finally:
        progress.close()
        model.eval()
    seconds = time.monotonic() - start
    if stopped_early:
        logger.warning(
            "stopped training after %.0f s (max_seconds=%s), at step %d of %d",
            seconds,
            settings.max_seconds,
            step,
            total_steps,
        )
    return TrainingResult(
        seconds=seconds,
        epochs_completed=step / steps_per_epoch,
        steps=step,
        final_loss=running_loss,
    )


@torch.no_grad()
def next_token_logprobs(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Log-probabilities over the vocabulary of the token after each prompt, (n, vocab)."""
    pad_id = tokenizer.pad_token_id
    assert isinstance(pad_id, int)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    rows = []
    for start in range(0, len(encoded), batch_size):
        documents = [list(ids) for ids in encoded[start : start + batch_size]]
        input_ids, attention_mask, _ = _collate(documents, range(len(documents)), pad_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        last = attention_mask.sum(dim=1) - 1
        rows.append(torch.log_softmax(logits[torch.arange(len(documents)), last].float(), dim=-1))
    return torch.cat(rows) if rows else torch.empty(0)


def value_token_id(tokenizer: transformers.PreTrainedTokenizerBase, value: str) -> int:
    """The single token of ``" " + value``; a value that is several tokens is an error."""
    ids = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise errors.UsageError(
            f"value {value!r} is {len(ids)} tokens {ids} for this tokenizer, but the toy world "
            "needs each value to be one token; raise the tokenizer's vocab_size"
        )
    return int(ids[0])


def fact_recall(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: Sequence[FactPrompt],
) -> list[bool]:
    """Whether the true value is the top-1 next token after each prompt."""
    if not prompts:
        return []
    logprobs = next_token_logprobs(model, tokenizer, [p.prompt for p in prompts])
    predicted = logprobs.argmax(dim=-1).tolist()
    return [
        pred == value_token_id(tokenizer, p.value)
        for pred, p in zip(predicted, prompts, strict=True)
    ]
