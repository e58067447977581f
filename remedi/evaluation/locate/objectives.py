"""What the edits of the two problems that ask for more than a likelier target run under.

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

- Noise (``experiments/evaluate.py``, ``get_subject_noising_function``, and
  ``experiments/py/eval_utils_counterfact.py``, ``test_batch_prediction``): Gaussian noise on the
  subject's token embeddings at causal tracing's scale (:mod:`remedi.tracing`, 3 sigma). Fact
  forcing edits under a per-case stream that restarts from the same seed for every case (their
  ``np.random.RandomState(1)``) and draws afresh on every forward pass; pre and post are judged
  under one draw, the first of that same stream (their evaluation re-seeds the same generator,
  and the rewrite prompt is row 0): so the judged draw is the one the edit's first noised
  subject mention was fitted under (:func:`forcing_noise`, :func:`noised_subject`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from remedi import hooks, models, tracing

FORCING_NOISE_SAMPLES = 1
"""Fact forcing is judged under one noise draw, as the reference's row 0."""


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
