"""Read and edit what modules compute, with forward hooks that always clean up.

One primitive, :func:`trace` (in the spirit of baukit's ``Trace``/``TraceDict``), serves every
hook in the package: for a set of named modules it can retain each one's input or output,
replace (or just look at) the input or output as it passes, and stop the forward pass once they
have all run. Every hook is removed on exit, also when the body raises. The helpers below it are
built on it: :func:`record_hiddens` (the residual stream of decoder blocks),
:func:`run_until_layer` (a forward pass cut short after one block) and :func:`add_directions`
(REMEDI's edit at a layer and token range).

Modules return a tensor or a tuple whose first element is the tensor of interest (decoder blocks,
depending on the family and the transformers version); :func:`trace` unpacks and repacks both, so
no caller handles tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from remedi.models import ModelAndTokenizer, resolve_layer, unwrap_model

K = TypeVar("K", bound=Hashable)

TensorEdit = Callable[[K, torch.Tensor], torch.Tensor | None]
"""``(key, tensor) -> replacement or None``: called with the traced module's key and its input or
output tensor on every forward pass; None leaves the tensor as it is (a function that only reads)."""


class StopForward(Exception):
    """Raised by a stopping :func:`trace` to end a forward pass; the trace swallows it on exit."""


@dataclass
class Traced:
    """What :func:`trace` retained of one module on the latest forward pass through it."""

    input: torch.Tensor | None = None
    """The module's first input tensor (e.g. an MLP projection's keys), with ``retain_input``."""
    output: torch.Tensor | None = None
    """The module's output tensor (a decoder block's hidden state, the first of its tuple), with
    ``retain_output``."""


def _output_tensor(output: Any) -> torch.Tensor:
    tensor = output[0] if isinstance(output, tuple) else output
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a module to output a tensor, got {type(tensor)}")
    return tensor


def _with_output_tensor(output: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | int, torch.Tensor]:
    """Where the module's first input tensor was passed (position 0 or a keyword) and the tensor."""
    if args and isinstance(args[0], torch.Tensor):
        return 0, args[0]
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return name, value
    raise TypeError("expected a module to be called with a tensor input, found none")


def _kept(tensor: torch.Tensor, detach: bool) -> torch.Tensor:
    return tensor.detach() if detach else tensor


@contextmanager
def trace(
    model: torch.nn.Module | ModelAndTokenizer,
    modules: Mapping[K, str | torch.nn.Module],
    *,
    retain_input: bool = False,
    retain_output: bool = False,
    detach: bool = False,
    edit_input: TensorEdit[K] | None = None,
    edit_output: TensorEdit[K] | None = None,
    stop: bool = False,
) -> Iterator[dict[K, Traced]]:
    """Hook ``modules`` (each a module of ``model`` or its dotted name) for the body.

    Yields ``{key: Traced}``, filled on every forward pass in the body. On each pass through a
    traced module, in order: ``edit_input(key, input)`` may replace its first input tensor, which
    is then retained (``retain_input``); the module runs; ``edit_output(key, output)`` may replace
    its output tensor, which is then retained (``retain_output``). Retained tensors keep their
    autograd graph unless ``detach``. With ``stop``, the forward pass of ``model`` ends
    (:class:`StopForward`) as soon as every traced module has run in it, so nothing after them
    (deeper blocks, the LM head) computes; the trace swallows that exception on exit, so make the forward pass the last
    statement of the body. Every hook is removed on exit, also when the body raises.

    Raises:
        AttributeError: A dotted name that is not a submodule of the model (before any hook is
            registered).
    """
    root = unwrap_model(model)
    resolved = {
        key: root.get_submodule(module) if isinstance(module, str) else module
        for key, module in modules.items()
    }
    traced = {key: Traced() for key in resolved}
    pending = set(resolved)

    def input_hook(key: K) -> Callable[..., Any]:
        def hook(
            module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            where, tensor = _input_tensor(args, kwargs)
            replaced = edit_input(key, tensor) if edit_input is not None else None
            if retain_input:
                traced[key].input = _kept(tensor if replaced is None else replaced, detach)
            if replaced is None:
                return None
            if isinstance(where, int):
                return (replaced, *args[1:]), kwargs
            return args, {**kwargs, where: replaced}

        return hook

    def output_hook(key: K) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            result = None
            if edit_output is not None or retain_output:
                tensor = _output_tensor(output)
                replaced = edit_output(key, tensor) if edit_output is not None else None
                if replaced is not None:
                    tensor, result = replaced, _with_output_tensor(output, replaced)
                if retain_output:
                    traced[key].output = _kept(tensor, detach)
            if stop:
                pending.discard(key)
                if not pending:
                    pending.update(resolved)
                    raise StopForward
            return result

        return hook

    def new_pass(module: torch.nn.Module, args: Any) -> None:
        # A pass that ended before every traced module ran (another trace stopped it, or a
        # module was not reached) does not count towards the next one.
        pending.update(resolved)

    handles = []
    try:
        if stop:
            handles.append(root.register_forward_pre_hook(new_pass))
        for key, module in resolved.items():
            if retain_input or edit_input is not None:
                handles.append(module.register_forward_pre_hook(input_hook(key), with_kwargs=True))
            if retain_output or edit_output is not None or stop:
                handles.append(module.register_forward_hook(output_hook(key)))
        yield traced
    except StopForward:
        if not stop:
            raise
    finally:
        for handle in handles:
            handle.remove()


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

    def record(layer: int, hidden: torch.Tensor) -> None:
        hiddens[layer] = hidden

    with trace(model, blocks, edit_output=record):
        yield hiddens


def run_until_layer(
    model: torch.nn.Module | ModelAndTokenizer, layer: int, inputs: Mapping[str, Any]
) -> None:
    """Run the model on ``inputs`` only up to the output of decoder block ``layer``.

    A stopping :func:`trace` on that block ends the forward pass, so the blocks above it, the
    final norm and the LM head (logits over the whole vocabulary at every position) never run.
    Hooks registered earlier, e.g. by :func:`record_hiddens`, still see every block up to
    ``layer``. No KV cache is built. The hook is removed on exit, also when the model raises.
    """
    with trace(model, {layer: resolve_layer(model, layer)}, stop=True):
        unwrap_model(model)(**inputs, use_cache=False)


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

    def edit(key: int, hidden: torch.Tensor) -> torch.Tensor | None:
        nonlocal forward_calls
        forward_calls += 1
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
        return hidden + alpha * mask * row_directions.unsqueeze(1)

    with trace(model, {layer: block}, edit_output=edit):
        yield


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
