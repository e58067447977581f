"""Methods that change weights by gradient steps on a suite's own loss: ``full`` fine-tuning
and ``lora`` (low-rank adapters with ``peft``).

Preparing one gives a :class:`Trainable`: the module the forward pass goes through, the
parameters the optimiser moves, and (when asked for) a way to get the unedited model's outputs
for a KL regulariser. The suite (e.g. canonical examples) owns the loss and the loop.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors

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


@dataclass
class FullHparams(DataClassJsonMixin):
    """``layers``: train only the parameters of these blocks (None: every parameter)."""

    layers: list[int] | None = None


DEFAULT_LORA_TARGETS = ["c_fc", "mlp.c_proj", "fc_in", "fc_out", "dense_h_to_4h", "dense_4h_to_h"]
"""MLP input and output projections of GPT-2, GPT-J and GPT-NeoX (the seed's LoRA targets)."""


@dataclass
class LoraHparams(DataClassJsonMixin):
    """Adapters of rank ``rank`` on the modules whose names end with one of ``targets``."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


def _layer_of(parameter_name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", parameter_name)
    return int(match.group(1)) if match else None


def full_finetuning(
    model: torch.nn.Module, hparams: FullHparams, need_reference: bool
) -> Trainable:
    """Every parameter trains (``layers``: only those of the listed blocks); the reference is a
    frozen copy of the model.

    Raises:
        errors.UsageError: ``layers`` selects no parameter.
    """
    chosen = []
    for name, parameter in model.named_parameters():
        train = hparams.layers is None or _layer_of(name) in hparams.layers
        parameter.requires_grad_(train)
        if train:
            chosen.append(parameter)
    if not chosen:
        raise errors.UsageError(
            f"method.layers {hparams.layers} selects no parameter of the model; give block "
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


def lora(model: torch.nn.Module, hparams: LoraHparams, need_reference: bool) -> Trainable:
    """Low-rank adapters (``peft``) on ``hparams.targets``; the base weights stay frozen and the
    disabled adapters give the original model.

    Raises:
        errors.UsageError: No module matches a target.
    """
    import peft

    names = [name for name, _ in model.named_modules()]
    targets = hparams.targets or DEFAULT_LORA_TARGETS
    present = [t for t in targets if any(name.endswith(t) for name in names)]
    if not present:
        raise errors.UsageError(
            f"method.lora_targets {targets} match no module of the model; name module-name "
            "suffixes such as c_fc or mlp.c_proj"
        )
    model.requires_grad_(False)
    config = peft.LoraConfig(
        r=hparams.rank,
        lora_alpha=hparams.alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=hparams.dropout,
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
