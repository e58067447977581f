"""The method table: every way of changing the model that a suite can judge, by name.

In the spirit of ROME's ``ALG_DICT`` (name -> hyperparameter class and apply function) and
EasyEdit's ``alg_name``: each entry (:class:`MethodSpec`) says what the method edits (weights,
hidden states or the prompt's text), its hyperparameter class, whether it edits many facts at
once, and how to prepare it for a model. Every suite (CounterFact, edit problems, harm, canonical
examples, entailment) finds a method here by name and asks :func:`prepare` for it; none keeps a
list of its own. Adding a method is one module (its hyperparameters, and a ``prepare`` that
returns a :class:`~remedi.methods.base.WeightEditor` or a
:class:`~remedi.methods.base.DirectionEditor`) and one entry in :data:`METHODS` (or a
:func:`register` call).

Hyperparameters come from the packaged file of the method and model
(``hparams/<method>/<model>.json``, :func:`~remedi.methods.hparams_file`) when the method has
such files, else from the class's defaults; a suite overrides fields by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from remedi import errors, io, models, tracing
from remedi.methods import HPARAMS_DIR, baselines, ft, hparams_file, kn, memit, remedi, rome, tuning
from remedi.methods.base import DirectionEditor, MethodSetup, WeightEditor

EditKind = Literal["weights", "hidden_states", "text"]
EDIT_KINDS: tuple[EditKind, ...] = ("weights", "hidden_states", "text")

Prepare = Callable[[models.ModelAndTokenizer, Any, MethodSetup], Any]
"""``prepare(mt, hparams, setup)``: a WeightEditor (weights) or DirectionEditor (hidden states)."""
Train = Callable[[torch.nn.Module, Any, bool], tuning.Trainable]
"""``train(model, hparams, need_reference)``: the model ready for a suite's training loop."""
Rewrite = Callable[[str, baselines.TextEdit], str]
"""``rewrite(prompt, edit)``: the text the LM reads instead of ``prompt``."""


@dataclass(frozen=True)
class MethodSpec:
    """One method: what it edits and how a suite gets it ready.

    A weights method has ``prepare`` (it computes edits from requests) or ``train`` (a suite
    trains it on its own loss); a hidden-states method has ``prepare``; a text method has
    ``rewrite``.
    """

    name: str
    label: str
    edits: EditKind
    hparams: type[Any] | None = None
    """Its hyperparameter dataclass (JSON round trip); None: it has none."""
    batches: bool = False
    """It edits many facts at once from the unedited model (MEMIT; REMEDI's directions are
    independent of each other); otherwise facts are given one at a time."""
    prepare: Prepare | None = None
    train: Train | None = None
    rewrite: Rewrite | None = None
    shows_rewrite: bool = True
    """Generated text shows the rewritten prompt (False: the original, e.g. without a prefix)."""
    needs_replacement: bool = False
    """The rewrite needs another entity with the new attribute (``replace``)."""
    edit_window: int | None = None
    """Layers it edits around a central layer when moved (None: its packaged width)."""
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """What identifies a text method's configuration in saved results."""

    def __post_init__(self) -> None:
        if self.edits not in EDIT_KINDS:
            raise errors.UsageError(
                f"method {self.name!r} edits {self.edits!r}; choose one of {', '.join(EDIT_KINDS)}"
            )
        ways = {
            "weights": self.prepare is not None or self.train is not None,
            "hidden_states": self.prepare is not None,
            "text": self.rewrite is not None,
        }
        if not ways[self.edits]:
            needed = {"weights": "prepare or train", "hidden_states": "prepare", "text": "rewrite"}
            raise errors.UsageError(
                f"method {self.name!r} edits {self.edits} but has no {needed[self.edits]}"
            )


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("unedited", "No Edit", "text", rewrite=baselines.unedited),
        MethodSpec(
            "prefix",
            "Prefix",
            "text",
            rewrite=baselines.prefix,
            shows_rewrite=False,
            details={"prefix": "context"},
        ),
        MethodSpec("replace", "Replace", "text", rewrite=baselines.replace, needs_replacement=True),
        MethodSpec(
            "remedi",
            "REMEDI",
            "hidden_states",
            remedi.RemediHparams,
            batches=True,
            prepare=remedi.prepare,
        ),
        MethodSpec("rome", "ROME", "weights", rome.RomeHparams, prepare=rome.prepare),
        MethodSpec(
            "memit", "MEMIT", "weights", memit.MemitHparams, batches=True, prepare=memit.prepare
        ),
        MethodSpec("ft", "FT-L", "weights", ft.FtHparams, prepare=ft.prepare),
        MethodSpec(
            "ft5", "FT-L (5 layers)", "weights", ft.FtHparams, prepare=ft.prepare, edit_window=5
        ),
        MethodSpec("kn", "KN", "weights", kn.KnHparams, prepare=kn.prepare),
        MethodSpec(
            "full", "Fine-tuning", "weights", tuning.FullHparams, train=tuning.full_finetuning
        ),
        MethodSpec("lora", "LoRA", "weights", tuning.LoraHparams, train=tuning.lora),
    )
}
"""Every method by name."""


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (a method defined outside this package, or in a test);
    registering the same entry again changes nothing.

    Raises:
        errors.UsageError: Another method of that name is registered already.
    """
    if METHODS.setdefault(spec.name, spec) is not spec:
        raise errors.UsageError(
            f"a method named {spec.name!r} is already registered; choose another name"
        )
    return spec


def unregister(name: str) -> None:
    """Remove method ``name`` from :data:`METHODS` (nothing if it is not there)."""
    METHODS.pop(name, None)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        errors.UsageError: No such method; the message lists the registered ones.
    """
    if name not in METHODS:
        raise errors.UsageError(
            f"unknown method {name!r}; registered methods: {', '.join(METHODS)}"
        )
    return METHODS[name]


def names(edits: EditKind | None = None, *, prepared: bool = False) -> list[str]:
    """Registered method names (in table order), only those that edit ``edits`` if given, only
    those a suite prepares (not trains) with ``prepared``."""
    return [
        name
        for name, spec in METHODS.items()
        if (edits is None or spec.edits == edits) and (not prepared or spec.prepare is not None)
    ]


def baselines_names() -> list[str]:
    """The methods that need nothing trained or computed: those that rewrite the text."""
    return names("text")


def load_hparams(
    name: str,
    model: str,
    hparams_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    setting: str | None = None,
) -> Any:
    """Method ``name``'s hyperparameters for ``model`` (an alias or name): read from
    ``hparams_path``, else from its packaged file if the method has packaged files (of the named
    ``setting``, e.g. ROME's ``gu2024``, if given), else the class's defaults; then each
    non-None value of ``overrides`` replaces the field of its name.

    Raises:
        errors.UsageError: The method has no hyperparameters, an unknown setting, a setting
            together with a file, or an override that names no field.
    """
    spec = method_spec(name)
    if setting is not None and hparams_path is not None:
        raise errors.UsageError(
            f"{name}: give a hyperparameter file or a packaged setting ({setting!r}), not both"
        )
    if spec.hparams is None:
        if overrides and any(value is not None for value in overrides.values()):
            raise errors.UsageError(f"method {name!r} has no hyperparameters to set")
        if setting is not None:
            raise errors.UsageError(f"method {name!r} has no hyperparameter settings")
        return None
    if hparams_path is None and (setting is not None or (HPARAMS_DIR / name).is_dir()):
        hparams_path = hparams_file(name, model, setting)
    if hparams_path is not None:
        hparams = spec.hparams.from_dict(
            io.read_json(Path(hparams_path), f"{name} hyperparameters")
        )
    else:
        hparams = spec.hparams()
    return with_overrides(spec, hparams, overrides or {})


def with_overrides(spec: MethodSpec, hparams: Any, overrides: Mapping[str, Any]) -> Any:
    """``hparams`` with each non-None value of ``overrides`` in the field of its name.

    Raises:
        errors.UsageError: An override names no field of the method's hyperparameters.
    """
    fields = {field.name for field in dataclasses.fields(hparams)}
    unknown = sorted(key for key in overrides if key not in fields)
    if unknown:
        raise errors.UsageError(
            f"method {spec.name!r} has no option {', '.join(unknown)}; its hyperparameters are "
            f"{', '.join(sorted(fields))}"
        )
    given = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(hparams, **given) if given else hparams


def prepare(
    name: str,
    mt: models.ModelAndTokenizer,
    setup: MethodSetup | None = None,
    hparams: Any = None,
    hparams_path: Path | None = None,
    setting: str | None = None,
    **overrides: Any,
) -> WeightEditor | DirectionEditor:
    """Method ``name`` ready to edit ``mt``: the entry point every suite calls.

    ``hparams`` (an instance of the method's class) or :func:`load_hparams` with
    ``hparams_path`` or a packaged ``setting``, and ``overrides`` (hyperparameter fields by
    name); ``setup`` says where key
    statistics come from, or gives an editor in memory. A weights method gives a
    :class:`~remedi.methods.base.WeightEditor` named as registered; a hidden-states method a
    :class:`~remedi.methods.base.DirectionEditor`.

    Raises:
        errors.UsageError: An unknown method, one that has nothing to prepare (text methods
            rewrite prompts; trained methods are trained by the suite), or a bad option.
    """
    spec = method_spec(name)
    if spec.prepare is None:
        how = "rewrites the prompt's text" if spec.edits == "text" else "is trained by the suite"
        raise errors.UsageError(
            f"method {name!r} {how}; there is nothing to prepare (methods prepared for a model: "
            f"{', '.join(names(prepared=True))})"
        )
    if hparams is None:
        hparams = load_hparams(name, mt.name, hparams_path, overrides, setting)
    elif setting is not None:
        raise errors.UsageError(
            f"{name}: give hyperparameters or a setting ({setting!r}), not both"
        )
    elif overrides:
        hparams = with_overrides(spec, hparams, overrides)
    prepared = spec.prepare(mt, hparams, setup or MethodSetup())
    if isinstance(prepared, WeightEditor):
        prepared.name = spec.name
    return prepared


def moved_to_layer(
    name: str, hparams: Mapping[str, Any], layer: int, num_layers: int
) -> dict[str, Any]:
    """Method ``name``'s hyperparameters (as a dict) with the edit moved to central layer
    ``layer``: ``layer`` replaced, or ``layers`` replaced by the window of the method's
    :attr:`~MethodSpec.edit_window` (else the packaged width) around it.

    Raises:
        errors.UsageError: The layer is out of range, or the hyperparameters name no layer.
    """
    moved = dict(hparams)
    if "layer" in moved:
        tracing.layer_window(layer, 1, num_layers)  # checks the range
        moved["layer"] = layer
    elif "layers" in moved:
        window = METHODS[name].edit_window if name in METHODS else None
        width = window or len(moved["layers"] or ()) or 1  # None: every layer (KN)
        moved["layers"] = tracing.layer_window(layer, width, num_layers)
    else:
        raise errors.UsageError(
            f"the {name} hyperparameters have neither 'layer' nor 'layers'; cannot move the "
            "edit to another layer"
        )
    return moved
