"""How an experiment changes the model: any method of :mod:`remedi.methods.registry`.

What the experiment does depends on how the method edits, not on its name:

- a method that *trains* (``full``, ``lora``: :mod:`remedi.methods.tuning`) takes gradient
  steps on the experiment's loss;
- a weight-editing method that computes its edit from requests (``memit``) writes all canonical
  examples at once, each example's (first) suffix after its prefix as one request
  (:func:`edit_requests`); it must edit many facts at once;
- a hidden-state method (``remedi``: :mod:`remedi.canon.remedi_method`) trains an editor whose
  directions the model adds at the canonical examples' entities.

The experiment's ``method`` settings name hyperparameters with the method's prefix
(``lora_rank``, ``memit_layers``, ``remedi_layer``) or without one (``layers``,
``mom2_adjustment``): :func:`method_hparams` maps them onto the method's hyperparameter fields.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from remedi import env, errors, models
from remedi.canon import scoring
from remedi.canon.config import MethodSettings
from remedi.data.canonical import CanonicalExample
from remedi.methods import registry, remedi
from remedi.methods.base import MethodSetup, WeightEditor
from remedi.methods.common import EditRequest

logger = logging.getLogger(__name__)


def canon_methods() -> list[str]:
    """The registered methods an experiment can use: those that train, those that edit weights
    of many facts at once, and those that edit hidden states with a REMEDI editor (trained on
    the examples, :mod:`remedi.canon.remedi_method`), in that order."""
    trained = [name for name, spec in registry.METHODS.items() if spec.train is not None]
    one_shot = [
        name
        for name, spec in registry.METHODS.items()
        if spec.edits == "weights" and spec.prepare is not None and spec.batches
    ]
    # Hidden-state methods train an editor here: those whose hyperparameters say which.
    states = [
        name
        for name, spec in registry.METHODS.items()
        if spec.edits == "hidden_states"
        and spec.hparams is not None
        and issubclass(spec.hparams, remedi.RemediHparams)
    ]
    return [*trained, *one_shot, *states]


def method_hparams(model: str, settings: MethodSettings) -> Any:
    """The hyperparameters of method ``settings.name`` for ``model``: its packaged file (or
    ``settings.hparams_file``), each field overridden by the setting ``<method>_<field>`` if the
    settings have one, else by the setting ``<field>``, where that is not None."""
    spec = registry.method_spec(settings.name)
    if spec.hparams is None:
        return None
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(spec.hparams):
        prefixed = f"{settings.name}_{field.name}"
        key = prefixed if hasattr(settings, prefixed) else field.name
        value = getattr(settings, key, None)
        if value is not None:
            overrides[field.name] = value
    path = Path(settings.hparams_file) if settings.hparams_file else None
    return registry.load_hparams(settings.name, model, path, overrides)


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


def one_shot_edit(
    mt: models.ModelAndTokenizer,
    examples: Sequence[CanonicalExample],
    settings: MethodSettings,
    loss_type: str,
) -> dict[str, torch.Tensor]:
    """New weights from a weight-editing method (e.g. MEMIT) with every canonical example as
    one request, all at once.

    Raises:
        errors.UsageError: The loss type has no suffix to write, or the method edits one fact
            at a time.
    """
    name = settings.name
    if loss_type not in ("good", "good-v-bad"):
        raise errors.UsageError(
            f"{name} writes a suffix into the model; loss_type {loss_type!r} has no suffix to "
            "write (use good, or good-v-bad whose first suffix is written)"
        )
    spec = registry.method_spec(name)
    if not (spec.edits == "weights" and spec.prepare is not None and spec.batches):
        raise errors.UsageError(
            f"method {name!r} does not edit many facts at once; canonical examples are written "
            f"in one edit: use one of {', '.join(canon_methods())}"
        )
    hparams = method_hparams(mt.name, settings)
    stats_dir = Path(settings.stats_dir) if settings.stats_dir else env.results_dir() / "stats"
    editor = registry.prepare(name, mt, MethodSetup(stats_dir=stats_dir), hparams)
    assert isinstance(editor, WeightEditor)
    positions = scoring.model_max_length(mt.model)
    # Room for the method's random prefixes (MEMIT's) before the prompt and its target.
    lengths = getattr(hparams, "context_template_lengths", [])
    longest_template = max((length for length, _ in lengths), default=0)
    room = positions - int(longest_template) - 16
    requests = edit_requests(examples, settings.memit_subject, mt.tokenizer, room)
    return editor.new_weights(mt, requests)
