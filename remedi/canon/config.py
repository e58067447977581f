"""An experiment is one YAML file, checked on load against the schema below.

A minimal experiment names a model, a task and a method; everything else has the seed's
defaults (``configs/example_full.yaml`` of Hewitt et al.: loss type and threshold from the task,
Adam, a cosine schedule over the epochs, no regularisation)::

    name: toy_works_for_lora
    model: toy
    task: toy_works_for
    data_root: results/canon/toy_data     # folder holding <task>/split/ and val100*.jsonl
    method: {name: lora, lora_rank: 4}
    training: {epochs: 5, learning_rate: 1.0e-3, batch_size: 8}
    regularization: {kl_weight: 0.5, l2_weight: 0.0}

An unknown key, a loss type that does not exist or a value of the wrong type raises a
one-line :class:`~remedi.errors.UsageError` naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remedi import errors

LOSS_TYPES = {
    "good": "suffix",
    "bad": "suffix",
    "balance": "pair",
    "good-v-bad": "pair",
}
"""The seed's loss types and the shape of example each applies to: ``good`` makes the suffix
likely, ``bad`` unlikely, ``balance`` makes two suffixes equally likely, ``good-v-bad`` makes
the first suffix likelier than the second."""

SPLITS = ("val", "test")


@dataclass
class MethodSettings:
    """How the model is changed: ``name`` is a registered method (``remedi.methods.registry``)
    that trains (``full``, ``lora``), edits hidden states (``remedi``) or writes all canonical
    examples in one edit (``memit``); see :func:`remedi.canon.methods.canon_methods`.

    ``lora_*`` apply to ``lora`` (``lora_targets``: module-name suffixes, default the MLP
    projections of every layer); ``layers`` restricts ``full`` to some blocks (default all
    parameters). ``memit_*`` and the three MEMIT settings the seed swept override the model's
    packaged MEMIT hyperparameters (``hparams_file``: another JSON); ``memit_subject`` is
    ``true`` (the line's subject field, the seed's ``true_subject``; the prefix where a line has
    none) or ``prefix`` (the whole prefix, the seed's ``prefix_subject``). ``remedi_*`` apply
    to ``remedi`` (:mod:`remedi.canon.remedi_method`): the layer of a new editor, its type and
    rank, or a trained editor's directory to start from, and the scale of its directions.
    """

    name: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None
    layers: list[int] | None = None
    hparams_file: str | None = None
    memit_subject: str = "true"
    memit_layers: list[int] | None = None
    mom2_adjustment: bool | None = None
    mom2_update_weight: float | None = None
    clamp_norm_factor: float | None = None
    kl_factor: float | None = None
    stats_num_texts: int | None = None
    stats_dir: str | None = None
    remedi_layer: int | None = None
    remedi_editor: str | None = None
    remedi_editor_type: str = "linear"
    remedi_rank: int | None = None
    remedi_alpha: float = 1.0


OPTIMIZERS = ("adam", "adam8bit")
"""``adam``: torch's, in the parameters' dtype; ``adam8bit``: bitsandbytes' 8-bit Adam, the seed's
(``trainer.py:31``)."""


@dataclass
class TrainingSettings:
    """The seed's optimisation: Adam (betas 0.9, 0.995), cosine annealing over ``epochs``.

    ``optimizer: adam8bit`` with the experiment's ``dtype: bfloat16`` is the seed's precision
    (bf16 weights, ``ft_experiment.py:48,54``; 8-bit Adam, ``trainer.py:31``); the default is
    float32 and torch's Adam. ``grad_acc_steps``: the gradients of that many batches are summed
    (each loss divided by it) before a step; the seed zeroes them before every batch
    (``trainer.py:64``), so its step used only the last batch's gradient.
    """

    epochs: int = 10
    learning_rate: float = 1e-5
    batch_size: int = 8
    grad_acc_steps: int = 1
    max_train_examples: int | None = None
    optimizer: str = "adam"


@dataclass
class RegularizationSettings:
    """KL to the original model on general text and/or L2 on the weight change, weighted.

    ``kl_texts``: the general text the KL term reads; None: the task's (``kl_texts`` of
    :class:`~remedi.data.canonical.CanonicalTask`: BoolQ's Wikipedia passages for the seed's
    tasks, disjoint from the bound's ``val100*.jsonl``); ``short``: the data root's
    ``val100-short.jsonl`` (for the real data, the first 100 lines of the bound's own set);
    otherwise a :mod:`remedi.corpora` spec (``shared:PATH``, ``file:PATH``, ...).
    ``kl_batch_size`` texts are drawn for each step (the seed's: its training batch size).
    """

    kl_weight: float = 0.0
    l2_weight: float = 0.0
    kl_batch_size: int = 8
    kl_texts: str | None = None


@dataclass
class EvaluationSettings:
    """Caps on the evaluation sets (None: all lines), for quick runs on big files."""

    batch_size: int = 16
    max_eval_examples: int | None = None
    max_hard_negatives: int | None = None
    max_unconditional: int | None = None
    max_general_texts: int | None = None
    max_length: int | None = None


@dataclass
class ExperimentConfig:
    """One train-and-evaluate experiment (see the module docstring for the YAML layout)."""

    model: str
    task: str
    name: str = ""
    split: str = "val"
    data_root: str | None = None
    random_init: bool = False
    loss_type: str | None = None
    threshold: float | None = None
    method: MethodSettings = field(default_factory=MethodSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    regularization: RegularizationSettings = field(default_factory=RegularizationSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    output_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _allowed(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _check_value(value: Any, annotation: Any, where: str, source: str) -> Any:
    """``value`` converted to ``annotation`` (int -> float allowed); raises naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where, source)
            except errors.UsageError as error:
                problems.append(str(error))
        raise errors.UsageError(problems[0])
    if annotation is Any:
        return value
    if origin is dict:
        _, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise errors.UsageError(
                f"{source}: key {where!r} must be a mapping, got {type(value).__name__} {value!r}"
            )
        return {
            str(key): _check_value(item, value_type, f"{where}.{key}", source)
            for key, item in value.items()
        }
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise errors.UsageError(
                f"{source}: key {where!r} must be a list, got {type(value).__name__} {value!r}"
            )
        return [
            _check_value(item, item_type, f"{where}[{i}]", source) for i, item in enumerate(value)
        ]
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where, source)  # type: ignore[arg-type]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML reads "1e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise errors.UsageError(
            f"{source}: key {where!r} must be {annotation.__name__}, got "
            f"{type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and missing required ones."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise errors.UsageError(
            f"{source}: {where or 'the file'} must be a mapping of keys ({_allowed(cls)}), got "
            f"{type(data).__name__}"
        )
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise errors.UsageError(
                f"{source}: unknown key {prefix + str(key)!r}; allowed keys: {_allowed(cls)}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        if name in data:
            values[name] = _check_value(data[name], hints[name], prefix + name, source)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise errors.UsageError(f"{source}: missing required key {prefix + name!r}")
    return cls(**values)


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate and build an experiment from a parsed YAML mapping (``source`` names it)."""
    config: ExperimentConfig = _build(ExperimentConfig, data, "", source)
    validate(config, source)
    return config


def validate(config: ExperimentConfig, source: str = "config") -> None:
    """Check values that the types alone do not: loss type, split, method and task names."""
    # Imported here: the registries import this module.
    from remedi.canon.methods import canon_methods
    from remedi.data.canonical import CANONICAL_TASKS

    if config.loss_type is not None and config.loss_type not in LOSS_TYPES:
        raise errors.UsageError(
            f"{source}: unknown loss_type {config.loss_type!r}; allowed: {', '.join(LOSS_TYPES)}"
        )
    if config.split not in SPLITS:
        raise errors.UsageError(
            f"{source}: unknown split {config.split!r}; allowed: {', '.join(SPLITS)}"
        )
    methods = canon_methods()
    if config.method.name not in methods:
        raise errors.UsageError(
            f"{source}: unknown method.name {config.method.name!r}; allowed: {', '.join(methods)}"
        )
    if config.training.optimizer not in OPTIMIZERS:
        raise errors.UsageError(
            f"{source}: unknown training.optimizer {config.training.optimizer!r}; allowed: "
            f"{', '.join(OPTIMIZERS)}"
        )
    if config.method.memit_subject not in ("true", "prefix"):
        raise errors.UsageError(
            f"{source}: unknown method.memit_subject {config.method.memit_subject!r}; allowed: "
            "true, prefix"
        )
    if config.method.name == "remedi":
        from remedi.editors import EDITOR_TYPES

        if config.method.remedi_editor_type not in EDITOR_TYPES:
            raise errors.UsageError(
                f"{source}: unknown method.remedi_editor_type "
                f"{config.method.remedi_editor_type!r}; allowed: {', '.join(EDITOR_TYPES)}"
            )
    if config.task not in CANONICAL_TASKS:
        raise errors.UsageError(
            f"{source}: unknown task {config.task!r}; allowed: {', '.join(CANONICAL_TASKS)}"
        )
    task = CANONICAL_TASKS[config.task]
    loss_type = config.loss_type or task.loss_type
    shape = "pair" if task.pair else "suffix"
    if LOSS_TYPES[loss_type] != shape:
        allowed = [name for name, kind in LOSS_TYPES.items() if kind == shape]
        raise errors.UsageError(
            f"{source}: loss_type {loss_type!r} needs {LOSS_TYPES[loss_type]} examples but task "
            f"{config.task} has {shape} examples; allowed: {', '.join(allowed)}"
        )
    for key, value in (
        ("training.epochs", config.training.epochs),
        ("training.batch_size", config.training.batch_size),
        ("training.grad_acc_steps", config.training.grad_acc_steps),
        ("evaluation.batch_size", config.evaluation.batch_size),
    ):
        if value < (0 if key == "training.epochs" else 1):
            raise errors.UsageError(f"{source}: {key} must be positive, got {value}")


def load_config(path: Path) -> ExperimentConfig:
    """Read and validate an experiment YAML; ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f"experiment config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise errors.FileFormatError(f"{path}: not valid YAML ({error})") from error
    config = config_from_dict(data if data is not None else {}, str(path))
    if not config.name:
        config.name = path.stem
    return config


def with_overrides(
    config: ExperimentConfig, overrides: Mapping[str, Any], source: str = "overrides"
) -> ExperimentConfig:
    """A copy of ``config`` with dotted keys (``training.learning_rate``) set, validated."""
    data = config.to_dict()
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise errors.UsageError(
                    f"{source}: unknown key {dotted!r}; {part!r} is not a section of the config"
                )
            node = node[part]
        node[last] = value
    return config_from_dict(data, source)
