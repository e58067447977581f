"""How an experiment changes the model: one registry entry per method (``full``, ``lora``).

A method prepares a loaded model for training: which module the forward pass goes through,
which parameters the optimiser moves, and how to get the unedited model's outputs for the KL
regulariser. ``full`` fine-tunes every parameter (or those of some blocks), ``lora`` trains
low-rank adapters with ``peft``, whose disabled adapters give the original model for free.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from remedi import errors
from remedi.canon.config import MethodSettings

logger = logging.getLogger(__name__)


@dataclass
class Trainable:
    """A model ready to train: its forward module, trainable parameters and the reference.

    ``reference()`` is a context manager yielding a module that computes the unedited model's
    outputs (for the KL term); ``None`` when no reference was asked for.
    """

    model: torch.nn.Module
    parameters: list[torch.nn.Parameter]
    reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]] | None = None


MethodFactory = Callable[[torch.nn.Module, MethodSettings, bool], Trainable]
"""``factory(model, settings, need_reference) -> Trainable``."""

CANON_METHODS: dict[str, MethodFactory] = {}
"""Methods by name; an experiment's ``method.name`` is a key here."""


def register_canon_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: register ``factory`` under ``name`` in :data:`CANON_METHODS`."""

    def register(factory: MethodFactory) -> MethodFactory:
        if name in CANON_METHODS:
            raise ValueError(f"a canonical-examples method named {name!r} is already registered")
        CANON_METHODS[name] = factory
        return factory

    return register


def _layer_of(parameter_name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", parameter_name)
    return int(match.group(1)) if match else None


@register_canon_method("full")
def full_finetuning(
    model: torch.nn.Module, settings: MethodSettings, need_reference: bool
) -> Trainable:
    """Every parameter trains (``layers``: only those of the listed blocks)."""
    chosen = []
    for name, parameter in model.named_parameters():
        train = settings.layers is None or _layer_of(name) in settings.layers
        parameter.requires_grad_(train)
        if train:
            chosen.append(parameter)
    if not chosen:
        raise errors.UsageError(
            f"method.layers {settings.layers} selects no parameter of the model; give block "
            "indices the model has"
        )
    reference = None
    if need_reference:
        frozen = copy.deepcopy(model).requires_grad_(False).eval()

        @contextlib.contextmanager
        def original() -> Iterator[torch.nn.Module]:
            yield frozen

        reference = original
    return Trainable(model, chosen, reference)


DEFAULT_LORA_TARGETS = ["c_fc", "mlp.c_proj", "fc_in", "fc_out", "dense_h_to_4h", "dense_4h_to_h"]
"""MLP input and output projections of GPT-2, GPT-J and GPT-NeoX (the seed's LoRA targets)."""


@register_canon_method("lora")
def lora(model: torch.nn.Module, settings: MethodSettings, need_reference: bool) -> Trainable:
    """Low-rank adapters (``peft``) on ``lora_targets``; the base weights stay frozen."""
    import peft

    names = [name for name, _ in model.named_modules()]
    targets = settings.lora_targets or DEFAULT_LORA_TARGETS
    present = [t for t in targets if any(name.endswith(t) for name in names)]
    if not present:
        raise errors.UsageError(
            f"method.lora_targets {targets} match no module of the model; name module-name "
            "suffixes such as c_fc or mlp.c_proj"
        )
    model.requires_grad_(False)
    config = peft.LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=settings.lora_dropout,
        target_modules=present,
        # GPT-2 stores its projections transposed (Conv1D).
        fan_in_fan_out=type(model).__name__.startswith("GPT2"),
    )
    wrapped = peft.get_peft_model(model, config)
    parameters = [p for p in wrapped.parameters() if p.requires_grad]
    logger.info("lora on %s: %d trainable parameters", present, sum(p.numel() for p in parameters))

    @contextlib.contextmanager
    def original() -> Iterator[torch.nn.Module]:
        with wrapped.disable_adapter():
            yield wrapped

    return Trainable(wrapped, parameters, original if need_reference else None)
