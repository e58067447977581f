"""Dump a trained editor's directions and the hidden states around them, to analyse offline.

The REMEDI reference writes such a dump for each dataset (its ``experiments/dump.py`` runs
``scripts/generate_directions.py``): for every sample, the direction the editor computes from
the sample's context, the attribute's representation it read, and the entity's hidden state at
every layer of the LM before and after the edit. Loaded back with :func:`load_dump`, a dump
answers questions that need no model: how directions cluster by attribute, how far an edit moves
the entity at each layer, how the direction relates to the attribute it encodes.

Per sample, at the editor's ``layer``, with the entity's position being the last token of its
last mention in the prompt (the token REMEDI edits by default, :func:`remedi.editors.apply_editor`):

- ``direction`` (hidden,): the editor's output;
- ``attribute`` (hidden,): the attribute's representation the editor read (the mean of the
  attribute's tokens in the context at ``layer``, the reference's, or its last token's for an
  editor trained with ``use_last_attribute_token``);
- ``entity_pre`` (layers, hidden): the entity's hidden state after every decoder block of the
  unedited LM run on the prompt;
- ``entity_post`` (layers, hidden): the same with the direction added at ``layer`` (rows below
  ``layer`` equal ``entity_pre``'s);
- ``entity_token`` (): that position in the prompt's tokens.

On disk, under the dump's directory: ``manifest.json`` (:class:`DumpManifest`: the editors, layer,
split and the samples, text included, in order) and the tensors in shards of
:data:`DEFAULT_SHARD_SIZE` samples, ``shard_00000.safetensors``, ... (float32, keyed as above with
a leading sample axis; safetensors, so reading a dump runs no pickled code). Each shard is
written atomically once its samples are done, so an interrupted dump resumes at the first missing
shard; a dump with other settings in the same directory is refused instead of mixed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import editors, errors, io, models, precompute

logger = logging.getLogger(__name__)

DUMP_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_FILE = "shard_{:05d}.safetensors"
DEFAULT_SHARD_SIZE = 256
"""Samples per shard: the most an interrupted dump recomputes."""
DEFAULT_BATCH_SIZE = 16
"""Samples per forward pass (the reference's batch size, its ``editors.DEFAULT_BATCH_SIZE``)."""
TENSOR_KEYS = ("direction", "attribute", "entity_pre", "entity_post", "entity_token")


@dataclass
class DumpSample(DataClassJsonMixin):
    """What a dumped sample is, in words (its tensors are in the shards, at the same index)."""

    id: str
    entity: str
    prompt: str
    context: str
    attribute: str


@dataclass
class DumpSettings(DataClassJsonMixin):
    """What decides a dump's numbers: a resumed dump must have all of them equal."""

    model: str
    dataset: str
    editors_dir: str
    editor_type: str
    layer: int
    split: str
    small: bool
    random_init: bool
    shard_size: int
    sample_ids: list[str]


@dataclass
class DumpManifest(DataClassJsonMixin):
    """``manifest.json``: the settings, the samples, and the shape of the tensors."""

    settings: DumpSettings
    samples: list[DumpSample]
    hidden_size: int
    num_layers: int
    split_description: str
    shards: list[str]
    complete: bool = False
    format_version: int = DUMP_FORMAT_VERSION
    notes: list[str] = field(default_factory=list)


@dataclass
class Dump:
    """A dump read back: the manifest and every tensor, samples along the first axis."""

    manifest: DumpManifest
    tensors: dict[str, torch.Tensor]

    @property
    def samples(self) -> list[DumpSample]:
        return self.manifest.samples

    def __len__(self) -> int:
        return len(self.manifest.samples)


def shard_path(directory: Path, index: int) -> Path:
    return Path(directory) / SHARD_FILE.format(index)


@torch.no_grad()
def sample_directions(
    mt: models.ModelAndTokenizer, editor: editors.Editor, samples: Sequence[Mapping[str, Any]]
) -> dict[str, torch.Tensor]:
    """The tensors of one batch of samples (see the module docstring), float32 on the CPU."""
    layer = editor.layer
    inputs = precompute.editor_inputs(
        mt,
        list(samples),
        [layer],
        batch_size=len(samples),
        with_targets=False,
        with_entities=editor.uses_entity,
        desc="editor inputs",
    )
    directions = editors.directions_from_inputs(editor, inputs)
    attribute = inputs.attribute(layer, editor.config.input_last_attribute_token)

    prompts, entities = inputs.prompts, inputs.entities
    device = models.determine_device(mt.model)
    prompt_inputs, offsets = precompute.tokenize(mt.tokenizer, prompts, device, "right")
    edited = editors.edit_token_ranges(
        mt.tokenizer,
        prompts,
        entities,
        offsets,
        prompt_inputs.attention_mask,
        editor.config.edit_last_entity_token,
    )
    # Under right padding the ranges are the prompt's own positions: its last edited token.
    entity_token = edited[:, 1].cpu() - 1
    layers = list(models.determine_layers(mt.model))
    rows = torch.arange(len(prompts))

    def entity_states(hiddens: Mapping[int, torch.Tensor]) -> torch.Tensor:
        at_entity = [hiddens[index].float().cpu()[rows, entity_token] for index in layers]
        return torch.stack(at_entity, dim=1)

    entity_pre = entity_states(precompute.hiddens_at_layers(mt, prompt_inputs, layers))
    with editors.apply_editor(
        mt, editor, directions, prompts, entities, padding_side="right"
    ) as edited_inputs:
        entity_post = entity_states(precompute.hiddens_at_layers(mt, edited_inputs, layers))
    return {
        "direction": directions.float().cpu(),
        "attribute": attribute.float().cpu(),
        "entity_pre": entity_pre,
        "entity_post": entity_post,
        "entity_token": entity_token,
    }


def _read_manifest(directory: Path) -> DumpManifest | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return DumpManifest.from_dict(io.read_json(path, "direction dump manifest"))
    except (KeyError, TypeError, ValueError) as error:
        raise errors.FileFormatError(
            f"{path} is not a direction dump manifest ({error}); remove the folder or pass "
            "--rerun to write the dump again"
        ) from error


def dump_directions(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    samples: Sequence[Mapping[str, Any]],
    directory: Path,
    settings: DumpSettings,
    split_description: str = "",
    notes: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    rerun: bool = False,
) -> DumpManifest:
    """Write the dump of ``samples`` (in this order) to ``directory``; return its manifest.

    Finished shards of a dump with the same ``settings`` are kept (the dump resumes); a dump
    with other settings is refused unless ``rerun``, which clears the directory first.

    Raises:
        MismatchError: ``directory`` holds a dump with other settings, and not ``rerun``.
    """
    directory = Path(directory)
    ids = [str(sample["id"]) for sample in samples]
    if ids != settings.sample_ids:
        raise ValueError("settings.sample_ids must be the ids of samples, in order")
    if not samples:
        raise errors.UsageError("no samples to dump: the split is empty, or --max-samples is 0")
    existing = None if rerun else _read_manifest(directory)
    if existing is not None and existing.settings != settings:
        raise errors.MismatchError(
            f"{directory} holds a dump with other settings (editors, layer, split or samples); "
            "pass --rerun to replace it, or dump under another name (-n)"
        )
    if rerun and directory.exists():
        shutil.rmtree(directory)
    num_shards = -(-len(samples) // settings.shard_size)
    manifest = DumpManifest(
        settings=settings,
        samples=[
            DumpSample(
                **{key: str(sample[key]) for key in ("id", "entity", "prompt", "context")},
                attribute=str(sample["attribute"]),
            )
            for sample in samples
        ],
        hidden_size=models.determine_hidden_size(mt.model),
        num_layers=len(models.determine_layers(mt.model)),
        split_description=split_description,
        shards=[SHARD_FILE.format(index) for index in range(num_shards)],
        notes=list(notes),
    )
    io.write_json(directory / MANIFEST_FILE, manifest.to_dict())
    missing = [index for index in range(num_shards) if not shard_path(directory, index).is_file()]
    if not missing:
        logger.info("the dump at %s is complete; nothing to do", directory)
    elif len(missing) < num_shards:
        done = num_shards - len(missing)
        logger.info("resuming the dump at %s: %d of %d shards done", directory, done, num_shards)
    finished = len(samples) - sum(len(_shard(samples, settings.shard_size, i)) for i in missing)
    progress = tqdm(total=len(samples), initial=finished, desc="dump directions")
    for index in missing:
        shard = _shard(samples, settings.shard_size, index)
        parts = []
        for batch_start in range(0, len(shard), batch_size):
            batch = shard[batch_start : batch_start + batch_size]
            parts.append(sample_directions(mt, editor, batch))
            progress.update(len(batch))
        tensors = {
            key: torch.cat([part[key] for part in parts]).contiguous() for key in TENSOR_KEYS
        }
        io.write_safetensors(shard_path(directory, index), tensors)
    progress.close()
    manifest.complete = True
    io.write_json(directory / MANIFEST_FILE, manifest.to_dict())
    return manifest


def _shard(samples: Sequence[Mapping[str, Any]], shard_size: int, index: int) -> Sequence[Any]:
    return samples[index * shard_size : (index + 1) * shard_size]


def load_dump(directory: Path) -> Dump:
    """Read a finished dump: its manifest and every tensor, concatenated over the shards.

    Raises:
        MissingFileError: No dump at ``directory``, or one that has not finished (resume it).
        FileFormatError: A shard does not hold the samples the manifest says.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        raise errors.MissingFileError(
            f"no direction dump at {directory} (no {MANIFEST_FILE}); write one with "
            "scripts.dump_directions or invoke x.dump.<dataset>"
        )
    if not manifest.complete:
        raise errors.MissingFileError(
            f"the direction dump at {directory} is not finished; run the same command again to "
            "resume it"
        )
    shards = [safetensors.torch.load_file(str(directory / name)) for name in manifest.shards]
    tensors = {key: torch.cat([shard[key] for shard in shards]) for key in TENSOR_KEYS}
    if any(len(tensor) != len(manifest.samples) for tensor in tensors.values()):
        raise errors.FileFormatError(
            f"the shards at {directory} hold other samples than its {MANIFEST_FILE} lists; "
            "write the dump again with --rerun"
        )
    return Dump(manifest, tensors)
