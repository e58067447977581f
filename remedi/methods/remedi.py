"""REMEDI as a method: a trained editor's direction added at the edited entity's mention.

Every suite uses REMEDI through :class:`RemediEdit` (registered as ``remedi``): the editor and how
strongly its directions are added (``alpha``, at the entity's last token or all its tokens);
:meth:`RemediEdit.directions` maps context mediation samples (entity, context, attribute, ...)
to directions. Where the mentions are and how the direction reaches the hidden state is the
suite's business (each tokenizes its own texts); the editor comes from here, loaded once:
:func:`load_editor` reads a training run or a saved editor, :func:`new_editor` starts a fresh
one at no edit (for suites that train it, such as canonical examples).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import editors, errors, models, precompute, training
from remedi.methods.base import MethodSetup

logger = logging.getLogger(__name__)


@dataclass
class RemediHparams(DataClassJsonMixin):
    """Which editor REMEDI uses and how strongly: a training run's editor (``editors_dir``, its
    only finished ``editor_type`` editor unless ``layer`` picks one), or a saved editor
    (``editor``); for a new editor (:func:`new_editor`): ``layer``, ``editor_type``, ``rank``."""

    editors_dir: str | None = None
    layer: int | None = None
    editor_type: str = "linear"
    editor: str | None = None
    """A saved editor's directory (``weights.safetensors`` + ``config.json``)."""
    rank: int | None = None
    alpha: float = editors.DEFAULT_ALPHA


def run_editor_layer(run_directory: Path, editor_type: str = "linear") -> int:
    """The layer of a run's only finished editor of ``editor_type``; raises if not exactly one."""
    available = training.list_run_editors(run_directory).get(editor_type, [])
    if len(available) == 1:
        return available[0]
    raise errors.UsageError(
        f"{run_directory} has finished {editor_type} editors for layers {available or 'none'}; "
        "choose one with -l LAYER"
    )


def load_editor(mt: models.ModelAndTokenizer, hparams: RemediHparams) -> editors.Editor:
    """The trained editor ``hparams`` names: a saved editor, or a training run's.

    Raises:
        errors.UsageError: Neither is named, or the run has no single editor to choose.
    """
    if hparams.editor:
        editor = editors.load_editor(Path(hparams.editor), mt, check_model=False)
        logger.info("remedi: editor from %s (layer %d)", hparams.editor, editor.layer)
        return editor
    if hparams.editors_dir is None:
        raise errors.UsageError(
            "the remedi method needs trained editors: pass editors_dir (a training run, "
            "e.g. results/editors_counterfact_toy) or an editor"
        )
    run = Path(hparams.editors_dir)
    layer = (
        hparams.layer if hparams.layer is not None else run_editor_layer(run, hparams.editor_type)
    )
    return training.load_run_editor(run, layer, hparams.editor_type, mt)


def new_editor(mt: models.ModelAndTokenizer, hparams: RemediHparams) -> editors.Editor:
    """A saved editor when ``hparams.editor`` names one, else a fresh editor at
    ``hparams.layer`` whose output layer is zero: it starts at no edit, as LoRA's adapters do.

    Raises:
        errors.UsageError: Neither a saved editor nor a layer is given.
    """
    if hparams.editor:
        return load_editor(mt, hparams)
    if hparams.layer is None:
        raise errors.UsageError(
            "method remedi trains a new editor: set its layer (the layer whose entity hidden "
            "state is edited; canonical examples: method.remedi_layer), or a trained editor "
            "(method.remedi_editor)"
        )
    editor = editors.new_editor(hparams.editor_type, mt, hparams.layer, rank=hparams.rank)
    last_linear = [m for m in editor.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last_linear.weight)
    torch.nn.init.zeros_(last_linear.bias)
    return editor


def editor_fingerprint(editor: editors.Editor) -> str:
    """SHA-256 (first 16 hex digits) of the editor's config and weights."""
    digest = hashlib.sha256(editor.config.to_json(sort_keys=True).encode())
    for name, tensor in sorted(editor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class RemediEdit:
    """A REMEDI editor used as a method (a :class:`~remedi.methods.base.DirectionEditor`)."""

    def __init__(
        self,
        editor: editors.Editor,
        alpha: float = editors.DEFAULT_ALPHA,
        source: str = "",
        batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
    ):
        self.editor = editor
        self.alpha = alpha
        self.source = source
        """The training run the editor comes from (recorded in results; empty if given)."""
        self.batch_size = batch_size
        self.layer = editor.layer
        self.last_token = editor.config.edit_last_entity_token
        self.label = f"REMEDI (L{editor.layer})"

    def directions(
        self, mt: models.ModelAndTokenizer, samples: Sequence[Mapping[str, str]]
    ) -> torch.Tensor:
        """The editor's direction for each sample (n, hidden), float32 on the model's device,
        ``batch_size`` samples per forward pass."""
        rows = [dict(sample) for sample in samples]
        return editors.editor_directions(mt, self.editor, rows, self.batch_size)

    def details(self) -> dict[str, str]:
        return {
            "editor_type": self.editor.config.editor_type,
            "layer": str(self.editor.layer),
            "alpha": str(self.alpha),
            "editors_dir": self.source,
            # A retrained editor in the same directory must not reuse the old results.
            "weights_sha256": editor_fingerprint(self.editor),
        }


def prepare(mt: models.ModelAndTokenizer, hparams: RemediHparams, setup: MethodSetup) -> RemediEdit:
    """REMEDI with ``setup.editor`` (an editor in memory) or the trained editor ``hparams``
    names (:func:`load_editor`)."""
    editor = setup.editor if setup.editor is not None else load_editor(mt, hparams)
    source = str(Path(hparams.editors_dir).resolve()) if hparams.editors_dir else ""
    return RemediEdit(editor, hparams.alpha, source, setup.batch_size)
