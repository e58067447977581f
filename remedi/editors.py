"""What an editor is, how it is applied to a prompt, and how it is saved.

A REMEDI editor maps the LM's representation of an attribute ("is English", mean hidden state
over its tokens in the context) and optionally of the entity, at one layer, to a *direction*.
Adding the direction to the hidden state of the entity's (last) token in a prompt at that layer
makes the LM behave as if the attribute held. Editors are ``nn.Module`` s keyed by name in
:data:`EDITOR_TYPES` (the reference's linear, biaffine, mlp, random, scalar, identity, null).

Applying an editor to any prompts that mention the entity::

    directions = editor_directions(mt, editor, samples)          # (n, hidden), once per sample
    with apply_editor(mt, editor, directions, prompts, entities) as inputs:
        logits = mt.model(**inputs).logits                       # or mt.model.generate(**inputs)

Saved editors are ``weights.safetensors`` plus ``config.json`` (an :class:`EditorConfig`), never
pickles; :func:`load_editor` rebuilds the exact editor and refuses one saved for another model
or hidden size. How editors are trained is in :mod:`remedi.training`.

Differences from the reference release (and why):

- Editors hold an :class:`EditorConfig` instead of the model: they save without pickles, load
  without the LM, and know the model they belong to (the reference saved bare ``state_dict``
  pickles whose options had to be passed again by hand).
- Editors compute in float32 whatever the LM's dtype; directions are cast to the LM's dtype when
  added. The reference ran fp16 editors and had to raise Adam's epsilon to avoid NaNs; in float32
  AdamW's updates of ``lr=1e-3`` are not lost to rounding either.
- The random editor samples from a Gaussian fitted to *entity deltas* (how the entity's hidden
  state moves when the context is prepended to the prompt), as the reference's, but through an
  eigendecomposition factor, so a singular covariance (fewer samples than dimensions) works; the
  reference's default covariance was an all-ones matrix.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
import transformers
from dataclasses_json import DataClassJsonMixin
from torch import nn

from remedi import errors, hooks, io, models, precompute

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
EDITOR_FORMAT_VERSION = 1
DEFAULT_ALPHA = 1.0


@dataclass
class EditorConfig(DataClassJsonMixin):
    """Everything needed to rebuild an editor (saved as ``config.json``)."""

    editor_type: str
    layer: int
    model_name: str
    hidden_size: int
    rank: int | None = None
    """Linear editor: rank of the map (None: full rank)."""
    use_entity: bool = False
    """Linear/MLP editors: also read the entity's representation (the reference's
    ``--use-entity``). Biaffine and scalar editors always do."""
    use_attribute: bool = True
    input_last_entity_token: bool = True
    """Read the entity's last-token hidden state (else the mean over its tokens)."""
    edit_last_entity_token: bool = True
    """Add the direction at the entity's last token in the prompt (else at all its tokens)."""
    input_last_attribute_token: bool = False
    """Read the attribute's last-token hidden state instead of the mean over its tokens
    (REMEDI's choice). Not in the reference; see :mod:`remedi.training` on the toy world."""
    lam_rel: float | None = None
    """The weight of the relation term the editor was trained with (``--lam-rel``; None: off,
    REMEDI's loss). It changes no computation here: it records how the editor's directions were
    made to leave the entity's other relations alone. Configs saved before it load as None."""
    format_version: int = EDITOR_FORMAT_VERSION


class Editor(nn.Module):
    """Maps attribute (and optionally entity) hidden states at one layer to directions."""

    needs_entity: ClassVar[bool] = False
    trainable: ClassVar[bool] = True

    def __init__(self, config: EditorConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def layer(self) -> int:
        return self.config.layer

    @property
    def uses_entity(self) -> bool:
        return self.needs_entity or self.config.use_entity

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return directions, shape (batch, hidden), from (batch, hidden) representations."""
        raise NotImplementedError

    def _entity(self, entity: torch.Tensor | None) -> torch.Tensor:
        if entity is None:
            raise ValueError(
                f"the {self.config.editor_type} editor reads the entity's representation; pass "
                "entity= (e.g. EditorInputs.entity_hiddens(layer))"
            )
        return entity

    def _inputs(self, attribute: torch.Tensor, entity: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.config.use_entity:
            parts.append(self._entity(entity))
        if self.config.use_attribute:
            parts.append(attribute)
        return torch.cat(parts, dim=-1)

    def _input_size(self) -> int:
        count = int(self.config.use_entity) + int(self.config.use_attribute)
        if count == 0:
            raise errors.UsageError("an editor must read the entity, the attribute, or both")
        return count * self.config.hidden_size


class LinearEditor(Editor):
    """An affine map of the attribute (and optionally entity): REMEDI's editor.

    Full rank by default; with ``rank`` it factors through a ``rank``-dimensional bottleneck.
    """

    def __init__(self, config: EditorConfig) -> None:
        super().__init__(config)
        size_in, size_out = self._input_size(), config.hidden_size
        self.w: nn.Module
        if config.rank is None:
            self.w = nn.Linear(size_in, size_out)
        else:
            self.w = nn.Sequential(
                nn.Linear(size_in, config.rank), nn.Linear(config.rank, size_out)
            )

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.w(self._inputs(attribute, entity))


class BiaffineEditor(Editor):
    """A sum of affine maps of the entity and of the attribute."""

    needs_entity = True

    def __init__(self, config: EditorConfig) -> None:
        super().__init__(config)
        self.w_entity = nn.Linear(config.hidden_size, config.hidden_size)
        self.w_attribute = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.w_entity(self._entity(entity)) + self.w_attribute(attribute)


class MlpEditor(Editor):
    """A two-layer MLP of the attribute (and optionally entity)."""

    def __init__(self, config: EditorConfig) -> None:
        super().__init__(config)
        self.mlp = nn.Sequential(
            nn.Linear(self._input_size(), config.hidden_size),
            nn.LeakyReLU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.mlp(self._inputs(attribute, entity))


class RandomEditor(Editor):
    """A baseline: random directions from a Gaussian fitted to entity deltas.

    ``mean`` and ``factor`` (with ``factor @ factor.T`` the covariance) are buffers, set by
    :func:`remedi.training.fit_random_editor`; untrained, directions are standard normal.
    """

    trainable = False

    def __init__(self, config: EditorConfig) -> None:
        super().__init__(config)
        self.mean: torch.Tensor
        self.factor: torch.Tensor
        self.register_buffer("mean", torch.zeros(config.hidden_size))
        self.register_buffer("factor", torch.eye(config.hidden_size))

    def set_distribution(self, samples: torch.Tensor) -> None:
        """Fit mean and covariance factor to (n, hidden) samples."""
        samples = samples.double()
        mean = samples.mean(dim=0)
        centered = samples - mean
        covariance = centered.T @ centered / max(len(samples) - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        factor = eigenvectors * eigenvalues.clamp(min=0).sqrt()
        self.mean.copy_(mean)
        self.factor.copy_(factor)

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        noise = torch.randn(len(attribute), self.config.hidden_size, device=self.mean.device)
        return (self.mean + noise @ self.factor.T).to(attribute.dtype)


class ScalarMultipleEditor(Editor):
    """A multiple of the attribute, the scalar an affine function of entity and attribute."""

    needs_entity = True

    def __init__(self, config: EditorConfig) -> None:
        super().__init__(config)
        self.scalar = nn.Linear(2 * config.hidden_size, 1)

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.scalar(torch.cat([self._entity(entity), attribute], dim=-1)) * attribute


class IdentityEditor(Editor):
    """A baseline: the attribute's representation itself is the direction."""

    trainable = False

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return attribute


class NullEditor(Editor):
    """A baseline: the zero direction (the model unedited, through the editing code path)."""

    trainable = False

    def forward(
        self, *, attribute: torch.Tensor, entity: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.zeros_like(attribute)


EDITOR_TYPES: dict[str, type[Editor]] = {
    "linear": LinearEditor,
    "biaffine": BiaffineEditor,
    "mlp": MlpEditor,
    "random": RandomEditor,
    "scalar": ScalarMultipleEditor,
    "identity": IdentityEditor,
    "null": NullEditor,
}


def build_editor(config: EditorConfig) -> Editor:
    """Instantiate the editor a config describes (float32, on the CPU)."""
    if config.editor_type not in EDITOR_TYPES:
        raise errors.UsageError(
            f"unknown editor type {config.editor_type!r}; known: {', '.join(EDITOR_TYPES)}"
        )
    if config.format_version > EDITOR_FORMAT_VERSION:
        raise errors.FileFormatError(
            f"editor format version {config.format_version} is newer than this remedi reads "
            f"({EDITOR_FORMAT_VERSION}); upgrade remedi"
        )
    return EDITOR_TYPES[config.editor_type](config)


def new_editor(
    editor_type: str, mt: models.ModelAndTokenizer, layer: int, **options: Any
) -> Editor:
    """A fresh editor of ``editor_type`` for ``mt`` at ``layer``, on the model's device.

    ``options`` are :class:`EditorConfig` fields (``rank``, ``use_entity``, ...).
    """
    models.determine_layer_paths(mt.model, [layer])  # fail early on a bad layer
    config = EditorConfig(
        editor_type=editor_type,
        layer=layer,
        model_name=mt.name,
        hidden_size=models.determine_hidden_size(mt.model),
        **options,
    )
    return build_editor(config).to(models.determine_device(mt.model))


# ---------------------------------------------------------------------------------------
# Saving and loading.


def save_editor(editor: Editor, directory: Path) -> None:
    """Write ``weights.safetensors`` and ``config.json`` to ``directory``, each atomically.

    The config is written last, so a directory with a config holds a complete editor.
    """
    directory = Path(directory)
    tensors = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in editor.state_dict().items()
    }
    io.write_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    io.write_json(directory / CONFIG_FILE, editor.config.to_dict())


def read_editor_config(directory: Path) -> EditorConfig:
    """The :class:`EditorConfig` saved in ``directory``."""
    raw = io.read_json(Path(directory) / CONFIG_FILE, "editor config")
    try:
        return EditorConfig.from_dict(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise errors.FileFormatError(
            f"{Path(directory) / CONFIG_FILE} is not an editor config ({error}); was it written "
            "by remedi.editors.save_editor?"
        ) from error


def _same_model(saved: str, asked: str) -> bool:
    def canonical(name: str) -> str:
        return models.MODEL_ALIASES.get(name, name).rstrip("/")

    return canonical(saved) == canonical(asked)


def load_editor(
    directory: Path, mt: models.ModelAndTokenizer | None = None, check_model: bool = True
) -> Editor:
    """Rebuild the editor saved in ``directory`` (on ``mt``'s device when given).

    Raises:
        errors.MismatchError: The editor was saved for another model or hidden size than ``mt``
            (pass ``check_model=False`` to use it anyway, e.g. on a renamed copy of the model).
    """
    directory = Path(directory)
    config = read_editor_config(directory)
    if mt is not None:
        hidden_size = models.determine_hidden_size(mt.model)
        if config.hidden_size != hidden_size:
            raise errors.MismatchError(
                f"editor in {directory} was saved for hidden size {config.hidden_size} "
                f"(model {config.model_name!r}) but {mt.name!r} has hidden size {hidden_size}; "
                "load it with the model it was trained for"
            )
        if check_model and not _same_model(config.model_name, mt.name):
            raise errors.MismatchError(
                f"editor in {directory} was trained for model {config.model_name!r}, not "
                f"{mt.name!r}; load it with that model, or pass check_model=False if "
                f"{mt.name!r} is the same model under another name"
            )
        models.determine_layer_paths(mt.model, [config.layer])
    editor = build_editor(config)
    weights_file = directory / WEIGHTS_FILE
    if not weights_file.is_file():
        raise errors.MissingFileError(
            f"editor weights not found: {weights_file}; the editor in {directory} is incomplete, "
            "save or train it again"
        )
    state = safetensors.torch.load_file(str(weights_file))
    try:
        editor.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise errors.FileFormatError(
            f"weights in {weights_file} do not fit a {config.editor_type} editor with config "
            f"{config.to_dict()}: {error}"
        ) from error
    if mt is not None:
        editor.to(models.determine_device(mt.model))
    return editor.eval()


# ---------------------------------------------------------------------------------------
# Applying editors.


def directions_from_inputs(editor: Editor, inputs: precompute.EditorInputs) -> torch.Tensor:
    """Directions (n, hidden), float32, for precomputed inputs at the editor's layer."""
    device = _editor_device(editor)
    attribute = inputs.attribute(editor.layer, editor.config.input_last_attribute_token)
    attribute = attribute.to(device)
    entity = None
    if editor.uses_entity:
        entity = inputs.entity_hiddens(editor.layer, editor.config.input_last_entity_token)
        entity = entity.to(device)
    return editor(attribute=attribute, entity=entity)


@torch.no_grad()
def editor_directions(
    mt: models.ModelAndTokenizer,
    editor: Editor,
    samples: precompute.Samples | precompute.EditorInputs,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
) -> torch.Tensor:
    """Directions (n, hidden), float32 on the model's device, for samples or precomputed inputs.

    Samples need ``id, entity, prompt, context, attribute`` (see :mod:`remedi.data`).
    """
    inputs = samples
    if not isinstance(inputs, precompute.EditorInputs):
        inputs = precompute.editor_inputs(
            mt,
            inputs,
            [editor.layer],
            batch_size=batch_size,
            with_targets=False,
            with_entities=editor.uses_entity,
        )
    was_training = editor.training
    editor.eval()
    try:
        parts = [directions_from_inputs(editor, batch) for batch in inputs.batches(batch_size)]
    finally:
        editor.train(was_training)
    return torch.cat(parts).to(models.determine_device(mt.model))


def edit_token_ranges(
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: Sequence[str],
    entities: Sequence[str],
    offset_mapping: torch.Tensor,
    attention_mask: torch.Tensor,
    last_entity_token: bool = True,
) -> torch.Tensor:
    """Padded token ranges to edit: the last mention of each entity in its prompt (its last
    token only, by default)."""
    spans = precompute.find_char_spans(prompts, entities)
    ranges = precompute.token_ranges_from_char_spans(spans, offset_mapping, attention_mask.cpu())
    return precompute.last_token_ranges(ranges) if last_entity_token else ranges


@contextlib.contextmanager
def apply_editor(
    mt: models.ModelAndTokenizer,
    editor: Editor,
    directions: torch.Tensor,
    prompts: Sequence[str],
    entities: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
    padding_side: str | None = None,
) -> Iterator[transformers.BatchEncoding]:
    """Tokenize ``prompts`` and edit the model while inside: yields the model inputs.

    ``directions[i]`` is added at the editor's layer to the (last token of the) last mention of
    ``entities[i]`` in ``prompts[i]``, on the prompt pass only, so ``mt.model.generate`` with
    the KV cache continues the edited prompt. Use ``padding_side="left"`` to generate.
    The hook is removed on exit, even on error.
    """
    if not len(prompts) == len(entities) == len(directions):
        raise ValueError(
            f"got {len(prompts)} prompts, {len(entities)} entities, {len(directions)} directions"
        )
    device = models.determine_device(mt.model)
    inputs, offset_mapping = precompute.tokenize(mt.tokenizer, prompts, device, padding_side)
    token_ranges = edit_token_ranges(
        mt.tokenizer,
        prompts,
        entities,
        offset_mapping,
        inputs.attention_mask,
        editor.config.edit_last_entity_token,
    )
    directions = directions.to(device=device, dtype=models.determine_dtype(mt.model))
    with hooks.add_directions(mt.model, editor.layer, directions, token_ranges.to(device), alpha):
        yield inputs


def _editor_device(editor: Editor) -> torch.device:
    for tensor in editor.state_dict().values():
        return tensor.device
    return torch.device("cpu")
