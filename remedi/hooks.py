"""Read and edit the residual stream with forward hooks that always clean up.

Both context managers hook the output of decoder blocks (see :mod:`remedi.models`) and
remove their hooks on exit, also when the body raises, so a model never keeps a stray edit.
:func:`run_until_layer` runs a model only as far as one block, for callers that read hidden
states and need nothing above them.
Decoder blocks return either a tensor or a tuple whose first element is the hidden state,
depending on the family and the transformers version; both are handled here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from remedi.models import ModelAndTokenizer, resolve_layer, unwrap_model


def _hidden_state_of(output: Any) -> torch.Tensor:
    hidden = output[0] if isinstance(output, tuple) else output
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"expected a decoder block to output a tensor, got {type(hidden)}")
    return hidden


def _with_hidden_state(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def record_hiddens(
    model: torch.nn.Module | ModelAndTokenizer, layers: Sequence[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden state each given layer outputs during the forward passes in the body.

    Yields a dict filled as the model runs: ``layer -> (batch, seq, hidden)`` output of that
    decoder block (the residual stream after it) on the latest forward pass. The tensors keep
    their autograd graph; run under ``torch.no_grad()`` when none is needed.
    """
    hiddens: dict[int, torch.Tensor] = {}
    blocks = {layer: resolve_layer(model, layer) for layer in layers}
    handles = []
    try:
        for layer, block in blocks.items():

            def record(
                module: torch.nn.Module, inputs: Any, output: Any, layer: int = layer
            ) -> None:
                hiddens[layer] = _hidden_state_of(output)

            handles.append(block.register_forward_hook(record))
        yield hiddens
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by :func:`run_until_layer`'s hook to end a forward pass after the needed block."""


def run_until_layer(
    model: torch.nn.Module | ModelAndTokenizer, layer: int, inputs: Mapping[str, Any]
) -> None:
    """Run the model on ``inputs`` only up to the output of decoder block ``layer``.

    A hook on that block ends the forward pass, so the blocks above it, the final norm and the
    LM head (logits over the whole vocabulary at every position) never run. Hooks registered
    earlier, e.g. by :func:`record_hiddens`, still see every block up to ``layer``. No KV cache
    is built. The hook is removed on exit, also when the model raises.
    """

    def stop(module: torch.nn.Module, args: Any, output: Any) -> None:
        raise StopForward

    handle = resolve_layer(model, layer).register_forward_hook(stop)
    try:
        unwrap_model(model)(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()


def token_range_mask(token_ranges: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Return the ``(batch, seq_len)`` boolean mask of the ``[start, end)`` range of each row."""
    positions = torch.arange(seq_len, device=token_ranges.device)
    starts, ends = token_ranges[:, :1], token_ranges[:, 1:]
    return (positions >= starts) & (positions < ends)


@contextmanager
def add_directions(
    model: torch.nn.Module | ModelAndTokenizer,
    layer: int,
    directions: torch.Tensor,
    token_ranges: torch.Tensor,
    alpha: float = 1.0,
) -> Iterator[None]:
    """Add ``alpha * directions[b]`` to row ``b``'s hidden states in ``token_ranges[b]``.

    Applied to the output of decoder block ``layer`` on every forward pass in the body, except
    the one-token steps of cached generation: a call after the first whose sequence length is
    1 only appends a new token, whose position is outside the prompt's ranges (but whose
    position index restarts at 0 in that call, which would otherwise be edited).

    Args:
        model: The LM.
        layer: Index of the decoder block whose output is edited.
        directions: ``(batch, hidden)`` vectors; gradients flow back through the edit.
        token_ranges: ``(batch, 2)`` ``[start, end)`` positions in the padded batch
            (see :func:`padded_token_ranges`).
        alpha: Scale of the directions.
    """
    if directions.dim() != 2 or token_ranges.shape != (directions.shape[0], 2):
        raise ValueError(
            "expected directions of shape (batch, hidden) and token_ranges of shape (batch, 2), "
            f"got {tuple(directions.shape)} and {tuple(token_ranges.shape)}"
        )
    block = resolve_layer(model, layer)
    forward_calls = 0

    def edit(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        nonlocal forward_calls
        forward_calls += 1
        hidden = _hidden_state_of(output)
        batch_size, seq_len = hidden.shape[:2]
        if forward_calls > 1 and seq_len == 1:
            return None
        if batch_size % directions.shape[0] != 0:
            raise ValueError(
                f"layer {layer} sees a batch of {batch_size} but {directions.shape[0]} "
                "directions were given; pass one direction and token range per example"
            )
        # generate() repeats each example for beams / return sequences, row by row.
        repeats = batch_size // directions.shape[0]
        row_directions = directions.to(hidden).repeat_interleave(repeats, dim=0)
        row_ranges = token_ranges.to(hidden.device).repeat_interleave(repeats, dim=0)
        mask = token_range_mask(row_ranges, seq_len).unsqueeze(-1).to(hidden.dtype)
        edited = hidden + alpha * mask * row_directions.unsqueeze(1)
        return _with_hidden_state(output, edited)

    handle = block.register_forward_hook(edit)
    try:
        yield
    finally:
        handle.remove()


def padded_token_ranges(token_ranges: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Shift ``(batch, 2)`` ranges in unpadded token positions to positions in a padded batch.

    Each row moves by the index of its first real token: the padding length under left
    padding, zero under right padding.
    """
    if token_ranges.dim() != 2 or token_ranges.shape[1] != 2:
        raise ValueError(f"expected token_ranges of shape (batch, 2), got {token_ranges.shape}")
    if attention_mask.shape[0] != token_ranges.shape[0]:
        raise ValueError(
            f"token_ranges has {token_ranges.shape[0]} rows but attention_mask has "
            f"{attention_mask.shape[0]}; pass one range per example of the batch"
        )
    # argmax returns the first maximal index: the first real token.
    first_token = attention_mask.to(torch.int64).argmax(dim=1).to(token_ranges.device)
    return token_ranges + first_token.unsqueeze(1)
