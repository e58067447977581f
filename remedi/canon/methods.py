"""How an experiment changes the model: ``full``, ``lora`` (trained), ``memit`` (one edit).

A method prepares a loaded model for training: which module the forward pass goes through,
which parameters the optimiser moves, and how to get the unedited model's outputs for the KL
regulariser. ``full`` fine-tunes every parameter (or those of some blocks), ``lora`` trains
low-rank adapters with ``peft``, whose disabled adapters give the original model for free.
:data:`EDIT_METHODS` instead compute new weights from all canonical examples at once: ``memit``
(:mod:`remedi.methods.memit`) writes each example's suffix after its prefix as one request.
:data:`STATE_METHODS` leave the weights alone and edit hidden states: ``remedi``
(:mod:`remedi.canon.remedi_method`) trains an editor whose directions the model adds at the
canonical examples' entities.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remedi import env, errors, models
from remedi.canon import scoring
from remedi.canon.config import MethodSettings
from remedi.data.canonical import CanonicalExample
from remedi.methods.common import EditRequest

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


StateFactory = Callable[
    [models.ModelAndTokenizer, str, Sequence[CanonicalExample], MethodSettings, bool], Trainable
]
"""``factory(mt, task_name, train_examples, settings, need_reference) -> Trainable`` whose
``model`` edits hidden states of the frozen LM and whose ``parameters`` are the edit's own."""

STATE_METHODS: dict[str, StateFactory] = {}
"""Methods that edit hidden states instead of weights, by name (trained like CANON_METHODS);
:mod:`remedi.canon.remedi_method` registers ``remedi``."""


# ---------------------------------------------------------------------------------------------
# Methods that write all canonical examples in one edit instead of training on them.

EditFactory = Callable[
    [models.ModelAndTokenizer, Sequence[CanonicalExample], MethodSettings, str],
    dict[str, torch.Tensor],
]
"""``factory(mt, train_examples, settings, loss_type) -> new weights by parameter name``."""

EDIT_METHODS: dict[str, EditFactory] = {}
"""One-shot editing methods by name (an experiment evaluates before and after the edit)."""


def edit_requests(
    examples: Sequence[CanonicalExample],
    subject_kind: str,
    tokenizer: Any = None,
    max_tokens: int | None = None,
) -> list[EditRequest]:
    """One request per canonical example: after the prefix, the (first) suffix.

    ``subject_kind`` ``true``: the example's subject where it has one in its prefix (the
    seed's ``true_subject``), else the prefix; ``prefix``: the whole prefix. When prompt and
    target together exceed ``max_tokens``, the target keeps at most half of them (its start)
    and the prompt its last tokens.
    """
    requests = []
    for example in examples:
        prompt, target = example.prefix.rstrip(), " " + example.suffix.strip()
        if tokenizer is not None and max_tokens is not None:
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            if len(prompt_ids) + len(target_ids) > max_tokens:
                target_ids = target_ids[: max_tokens // 2]
                target = tokenizer.decode(target_ids)
                prompt_ids = prompt_ids[-(max_tokens - len(target_ids)) :]
                prompt = tokenizer.decode(prompt_ids).strip()
        subject = example.subject if subject_kind == "true" else None
        if not subject or subject not in prompt:
            subject = prompt
        requests.append(EditRequest(prompt, subject, target))
    return requests


def _memit_hparams(mt: models.ModelAndTokenizer, settings: MethodSettings) -> Any:
    from remedi.methods import hparams_file, memit

    path = Path(settings.hparams_file) if settings.hparams_file else hparams_file("memit", mt.name)
    hparams = memit.MemitHparams.from_file(path)
    overrides = {
        "layers": settings.memit_layers,
        "mom2_adjustment": settings.mom2_adjustment,
        "mom2_update_weight": settings.mom2_update_weight,
        "clamp_norm_factor": settings.clamp_norm_factor,
        "kl_factor": settings.kl_factor,
        "stats_num_texts": settings.stats_num_texts,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(hparams, key, value)
    return hparams


def memit_edit(
    mt: models.ModelAndTokenizer,
    examples: Sequence[CanonicalExample],
    settings: MethodSettings,
    loss_type: str,
) -> dict[str, torch.Tensor]:
    """MEMIT (:mod:`remedi.methods.memit`) with every canonical example as one request."""
    from remedi.methods import memit

    if loss_type not in ("good", "good-v-bad"):
        raise errors.UsageError(
            f"memit writes a suffix into the model; loss_type {loss_type!r} has no suffix to "
            "write (use good, or good-v-bad whose first suffix is written)"
        )
    hparams = _memit_hparams(mt, settings)
    stats_dir = Path(settings.stats_dir) if settings.stats_dir else env.results_dir() / "stats"
    moments = memit.load_second_moments(mt, hparams, stats_dir)
    positions = scoring.model_max_length(mt.model)
    # Room for MEMIT's random prefixes before the prompt and its target.
    longest_template = max((length for length, _ in hparams.context_template_lengths), default=0)
    room = positions - int(longest_template) - 16
    requests = edit_requests(examples, settings.memit_subject, mt.tokenizer, room)
    new_weights: dict[str, torch.Tensor] = memit.edit(mt, requests, hparams, moments)
    return new_weights


EDIT_METHODS["memit"] = memit_edit
