"""Second-moment statistics of MLP keys over a text corpus: ROME's and MEMIT's ``C = E[k k^T]``.

The keys are the inputs of one layer's MLP output projection, at every (non-padding) token of the
corpus's texts (each truncated to the model's context). The statistic is computed in chunks of
texts, with a progress bar, accumulated in float64, saved every few chunks so that an interrupted
run resumes where it stopped, and cached as safetensors with metadata: the model (name and a
fingerprint of the projection's weight), layer, dataset, number of texts and tokens, dtype. A
cache made for another model or layer is refused.

Corpora: ``toy`` is the toy world's own training text (offline); any other name is a Hugging Face
dataset, ``NAME`` or ``NAME:CONFIG``, whose ``text`` column is read (ROME used Wikipedia).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import safetensors.torch
import torch
from tqdm.auto import tqdm

from remedi import errors, hooks, io, models
from remedi.methods.common import record_mlp_keys
from remedi.toy.corpus import training_documents
from remedi.toy.world import World

logger = logging.getLogger(__name__)

TOY_DATASET = "toy"
STATS_DATASET_FLAG = "--stats-dataset"
"""The command-line flag that names the statistics corpus (named in errors)."""
SAVE_EVERY_CHUNKS = 8


@dataclass(frozen=True)
class SecondMoment:
    """``E[k k^T]`` of one layer's MLP keys, with what it was computed from."""

    moment: torch.Tensor
    """(in_features, in_features), float32."""
    metadata: dict[str, str]


def corpus_texts(dataset: str, num_texts: int, world: World | None = None) -> list[str]:
    """The first ``num_texts`` texts of the statistics corpus ``dataset``.

    Raises:
        errors.UsageError: ``toy`` without a toy world, or a dataset that cannot be loaded
            (offline, misspelled, no ``text`` column); the message names the flag.
    """
    if dataset == TOY_DATASET:
        if world is None:
            raise errors.UsageError(
                f"statistics corpus {TOY_DATASET!r} is the toy world's text, but no toy world "
                f"was given; evaluate on the toy world or pass {STATS_DATASET_FLAG} NAME[:CONFIG] "
                "(a Hugging Face text dataset)"
            )
        return [document.text for document in training_documents(world)][:num_texts]
    name, _, config = dataset.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None, split="train")
    except Exception as error:  # datasets raises many kinds (network, missing config, ...)
        raise errors.UsageError(
            f"cannot load the statistics corpus {dataset!r} ({type(error).__name__}: {error}); "
            f"pass {STATS_DATASET_FLAG} NAME[:CONFIG] with a Hugging Face text dataset that is "
            f"cached on this machine (e.g. wikitext:wikitext-103-raw-v1), or {TOY_DATASET} on the "
            "toy world"
        ) from error
    if "text" not in loaded.column_names:
        raise errors.UsageError(
            f"statistics corpus {dataset!r} has no 'text' column (columns: "
            f"{loaded.column_names}); pass {STATS_DATASET_FLAG} with a text dataset"
        )
    texts = [text for text in loaded.select(range(min(len(loaded), 4 * num_texts)))["text"]]
    return [text for text in texts if text.strip()][:num_texts]


def weight_fingerprint(mt: models.ModelAndTokenizer, layer: int) -> str:
    """SHA-256 (16 hex digits) of the layer's MLP output weight: which model the keys are of."""
    projection = models.determine_mlp_output(mt.model, layer)
    weight = mt.model.get_parameter(projection.weight_name)
    data = weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def stats_file(
    directory: Path, mt: models.ModelAndTokenizer, layer: int, dataset: str, num_texts: int
) -> Path:
    """Where the statistics of these settings are cached."""
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{mt.name}")
    data_slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", dataset)
    return directory / slug / f"{data_slug}_layer{layer}_n{num_texts}_mom2.safetensors"


def second_moment(
    mt: models.ModelAndTokenizer,
    layer: int,
    dataset: str,
    num_texts: int,
    cache_dir: Path | None = None,
    world: World | None = None,
    texts: Sequence[str] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    chunk_texts: int = 256,
) -> SecondMoment:
    """``E[k k^T]`` of the keys at ``layer`` over ``num_texts`` texts of ``dataset``.

    Reads the cache in ``cache_dir`` if it holds these settings for this model, else computes
    (resuming a partial file) and writes it. ``texts`` overrides the corpus (tests; it is still
    recorded under the name ``dataset``).

    Raises:
        errors.MismatchError: The cache was made for another model or layer.
    """
    projection = models.determine_mlp_output(mt.model, layer)
    expected = {
        "model": mt.name,
        "weight_sha256": weight_fingerprint(mt, layer),
        "layer": str(layer),
        "module": projection.module_path,
        "dataset": dataset,
        "num_texts": str(num_texts),
    }
    path = stats_file(cache_dir, mt, layer, dataset, num_texts) if cache_dir else None
    if path is not None and path.is_file():
        moment, metadata = _read(path)
        _check(metadata, expected, path)
        return SecondMoment(moment, metadata)

    if texts is None:
        texts = corpus_texts(dataset, num_texts, world)
    texts = list(texts)[:num_texts]
    partial = path.with_suffix(".partial.safetensors") if path is not None else None
    total = torch.zeros(projection.in_features, projection.in_features, dtype=torch.float64)
    done, tokens = 0, 0
    if partial is not None and partial.is_file():
        saved, metadata = _read(partial, key="sum")
        _check(metadata, expected, partial)
        total, done, tokens = saved.double(), int(metadata["texts_done"]), int(metadata["tokens"])
        logger.info("resuming statistics from %s (%d of %d texts)", partial, done, len(texts))

    limit = max_length or _max_positions(mt.model)
    progress = tqdm(total=len(texts), initial=done, desc=f"key statistics L{layer}", disable=None)
    chunk_index = 0
    while done < len(texts):
        chunk = texts[done : done + chunk_texts]
        chunk_sum, chunk_tokens = _keys_sum(mt, layer, projection, chunk, batch_size, limit)
        total += chunk_sum
        tokens += chunk_tokens
        done += len(chunk)
        progress.update(len(chunk))
        chunk_index += 1
        if partial is not None and chunk_index % SAVE_EVERY_CHUNKS == 0 and done < len(texts):
            _write(
                partial, "sum", total, {**expected, "texts_done": str(done), "tokens": str(tokens)}
            )
    progress.close()
    if tokens == 0:
        raise errors.UsageError(f"statistics corpus {dataset!r} has no tokens")
    moment = (total / tokens).float()
    metadata = {
        **expected,
        "tokens": str(tokens),
        "texts": str(done),
        "dtype": str(moment.dtype).removeprefix("torch."),
        "accumulated_in": "float64",
    }
    if path is not None:
        _write(path, "mom2", moment, metadata)
        if partial is not None and partial.exists():
            partial.unlink()
        logger.info("wrote key statistics (%d tokens) to %s", tokens, path)
    return SecondMoment(moment, metadata)


@torch.no_grad()
def _keys_sum(
    mt: models.ModelAndTokenizer,
    layer: int,
    projection: models.MlpOutput,
    texts: Sequence[str],
    batch_size: int,
    max_length: int | None,
) -> tuple[torch.Tensor, int]:
    device = models.determine_device(mt.model)
    total = torch.zeros(projection.in_features, projection.in_features, dtype=torch.float64)
    tokens = 0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        inputs = mt.tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
        ).to(device)
        # Only the keys of ``layer`` are read: the blocks above it and the LM head never run.
        with record_mlp_keys(mt.model, projection) as recorded:
            hooks.run_until_layer(mt.model, layer, inputs)
        keys = recorded["keys"][inputs.attention_mask.bool()].double()
        total += (keys.T @ keys).cpu()
        tokens += keys.shape[0]
    return total, tokens


def _max_positions(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _check(metadata: dict[str, str], expected: dict[str, str], path: Path) -> None:
    wrong = {key: (metadata.get(key), value) for key, value in expected.items()}
    wrong = {key: pair for key, pair in wrong.items() if pair[0] != pair[1]}
    if wrong:
        details = ", ".join(
            f"{key}: file {have!r}, wanted {want!r}" for key, (have, want) in wrong.items()
        )
        raise errors.MismatchError(
            f"key statistics {path} were made for another model or setting ({details}); "
            "delete the file (or point the statistics directory elsewhere) to recompute them"
        )


def _read(path: Path, key: str = "mom2") -> tuple[torch.Tensor, dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensor = handle.get_tensor(key)
    except Exception as error:
        raise errors.FileFormatError(
            f"cannot read key statistics {path}: {error}; delete it to recompute"
        ) from error
    return tensor, metadata


def _write(path: Path, key: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    def save(target: Path) -> None:
        safetensors.torch.save_file({key: tensor.contiguous()}, str(target), metadata=metadata)

    path.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write(path, save)
