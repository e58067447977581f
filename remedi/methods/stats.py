"""Second-moment statistics of MLP keys over a text corpus: ROME's and MEMIT's ``C = E[k k^T]``.

The keys are the inputs of a layer's MLP output projection, at every (non-padding) token of the
corpus's texts (each truncated to the model's context). All requested layers are computed in one
pass over the corpus: each forward stops after the deepest of them, and a hook on each layer's
projection adds that batch's ``K^T K`` to the layer's sum. Texts are read in chunks; a chunk is
tokenized, sorted by length and packed into batches of at most ``max_batch_tokens`` padded tokens
(rows x longest row), which bounds the memory of a forward whatever the texts' lengths.

Precision, as kmeng01/rome (``rome/layer_stats.py`` casts the keys to ``mom2_dtype``, float32 in
every ROME/MEMIT hparams file, and ``util/runningstats.py``'s ``SecondMoment`` adds each batch's
``a.t().mm(a)`` to a running sum in that dtype): each batch's product is computed in float32 (or
the keys' dtype if wider). Unlike the reference, the sum over batches is kept in float64, so its
rounding error does not grow with the corpus. Both dtypes are in the cache's metadata.

The sums are saved every few chunks so that an interrupted run resumes where it stopped, and each
layer is cached as its own safetensors file with metadata: the model (name and a fingerprint of the
projection's weight), layer, corpus, number of texts and tokens, dtype. A cache made for another
model, layer or corpus is refused.

The texts come from a :class:`remedi.corpora.Corpus` (the toy world's text, local files, a Hugging
Face dataset; see :mod:`remedi.corpora`); its key, which identifies the texts, names the cache
file and is checked in its metadata, so statistics of one corpus are never read for another.

Which texts, as kmeng01/rome and kmeng01/memit (``rome/layer_stats.py`` in both): ROME and MEMIT
read the train split of ``wikipedia`` ``20200501.en`` (rome/layer_stats.py:39,96-99; MEMIT the
same, :39,97-100), 100,000 texts (``mom2_n_samples`` in their hparams files; :42), drawn at
random with seed 1 (:149, MEMIT :150) by util/runningstats.py:1587-1600, which takes every text
when the corpus holds fewer. Here a corpus that holds more than ``num_texts`` texts is sampled
the same way (:meth:`remedi.corpora.Corpus.sample`, seed ``sample_seed``, default theirs), and
the seed is part of the cache file's name and metadata; a corpus that holds no more gives all
its texts in their order, under the name and metadata that caches had before samples were
drawn. Each text is truncated to the model's context (as :100-103). ROME packs 100 texts at a
time into batches of at most 3 x the context (:106-109, rome/tok_dataset.py:49-77); here chunks
of ``chunk_texts`` go into batches of at most ``max_batch_tokens``: other batches, the same keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tqdm.auto import tqdm

from remedi import corpora, errors, hooks, io, models

logger = logging.getLogger(__name__)

SAVE_EVERY_CHUNKS = 8
DEFAULT_BATCH_TOKENS = 4096
"""Padded tokens per forward (ROME's default is 3 x the context). GPT-2 small's statistics of five
layers at once over 1024-token texts (four per batch) peak at 1.8 GB resident on CPU, 1.2 GB of it
the loaded model (measured)."""


@dataclass(frozen=True)
class SecondMoment:
    """``E[k k^T]`` of one layer's MLP keys, with what it was computed from."""

    moment: torch.Tensor
    """(in_features, in_features), float32."""
    metadata: dict[str, str]


def weight_fingerprint(mt: models.ModelAndTokenizer, layer: int) -> str:
    """SHA-256 (16 hex digits) of the layer's MLP output weight: which model the keys are of."""
    projection = models.determine_mlp_output(mt.model, layer)
    weight = mt.model.get_parameter(projection.weight_name)
    data = weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def stats_file(
    directory: Path,
    mt: models.ModelAndTokenizer,
    layer: int,
    corpus: corpora.Corpus,
    num_texts: int,
    sample_seed: int | None = None,
) -> Path:
    """Where the statistics of these settings are cached (named by the corpus's key, and by
    ``sample_seed`` when the texts are a sample of the corpus; None: all its texts)."""
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{mt.name}")
    data_slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", corpus.key)
    sample = "" if sample_seed is None else f"_seed{sample_seed}"
    return directory / slug / f"{data_slug}_layer{layer}_n{num_texts}{sample}_mom2.safetensors"


def second_moment(
    mt: models.ModelAndTokenizer,
    layer: int,
    corpus: corpora.Corpus,
    num_texts: int,
    cache_dir: Path | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    chunk_texts: int = 256,
    product_dtype: torch.dtype | None = None,
    sample_seed: int = corpora.SAMPLE_SEED,
) -> SecondMoment:
    """``E[k k^T]`` of the keys at ``layer``: :func:`second_moments` for one layer."""
    return second_moments(
        mt,
        [layer],
        corpus,
        num_texts,
        cache_dir=cache_dir,
        max_batch_tokens=max_batch_tokens,
        max_length=max_length,
        chunk_texts=chunk_texts,
        product_dtype=product_dtype,
        sample_seed=sample_seed,
    )[layer]


@dataclass
class _LayerSum:
    """The running ``sum k k^T`` of one layer, how far it got, and where it is cached."""

    projection: models.MlpOutput
    total: torch.Tensor
    texts_done: int
    tokens: int
    expected: dict[str, str]
    path: Path | None

    @property
    def partial(self) -> Path | None:
        return self.path.with_suffix(".partial.safetensors") if self.path is not None else None

    def save_partial(self) -> None:
        if self.partial is not None:
            done = {"texts_done": str(self.texts_done), "tokens": str(self.tokens)}
            _write(self.partial, "sum", self.total.cpu(), {**self.expected, **done})

    def finish(self, corpus_name: str, products_in: torch.dtype) -> SecondMoment:
        """The moment, written to the cache (the partial file removed)."""
        if self.tokens == 0:
            raise errors.UsageError(f"statistics corpus {corpus_name!r} has no tokens")
        moment = (self.total / self.tokens).float().cpu()
        metadata = {
            **self.expected,
            "corpus": corpus_name,
            "tokens": str(self.tokens),
            "texts": str(self.texts_done),
            "dtype": _dtype_name(moment.dtype),
            "batch_products_in": _dtype_name(products_in),
            "accumulated_in": "float64",
        }
        if self.path is not None:
            _write(self.path, "mom2", moment, metadata)
            if self.partial is not None and self.partial.exists():
                self.partial.unlink()
            logger.info("wrote key statistics (%d tokens) to %s", self.tokens, self.path)
        return SecondMoment(moment, metadata)


def second_moments(
    mt: models.ModelAndTokenizer,
    layers: Sequence[int],
    corpus: corpora.Corpus,
    num_texts: int,
    cache_dir: Path | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    max_length: int | None = None,
    chunk_texts: int = 256,
    product_dtype: torch.dtype | None = None,
    sample_seed: int = corpora.SAMPLE_SEED,
) -> dict[int, SecondMoment]:
    """``E[k k^T]`` of the keys at each of ``layers`` over ``num_texts`` texts of ``corpus``:
    a random sample drawn with ``sample_seed`` when it holds more (as ROME and MEMIT, see the
    module's description), else all of them.

    Layers cached in ``cache_dir`` (for this model, corpus and sample) are read; the others are
    computed together in one pass over the corpus (resuming their partial files) and written,
    one file per layer; the corpus's texts are read only then. A cache of a sample is found
    without counting the corpus's texts; a cache of all of them needs their number.
    A forward holds at most ``max_batch_tokens`` padded tokens, except a single text longer than
    that (texts are truncated to ``max_length``, default the model's context). Each batch's
    product is computed in ``product_dtype`` (default float32, or the keys' dtype if wider) and
    summed in float64.

    Raises:
        errors.MismatchError: A cache was made for another model, layer, corpus or sample.
    """
    results: dict[int, SecondMoment] = {}
    sums: dict[int, _LayerSum] = {}
    seed = _sample_seed(mt, layers, corpus, num_texts, cache_dir, sample_seed)
    for layer in sorted(set(layers)):
        opened = _open_layer(mt, layer, corpus, num_texts, cache_dir, seed)
        if isinstance(opened, SecondMoment):
            results[layer] = opened
        else:
            sums[layer] = opened
    if not sums:
        return results

    texts = corpus.texts(num_texts) if seed is None else corpus.sample(num_texts, seed)
    limit = max_length or _max_positions(mt.model)
    position = min(running.texts_done for running in sums.values())
    progress = tqdm(
        total=len(texts),
        initial=position,
        unit="text",
        desc=f"key statistics L{','.join(map(str, sums))}",
        disable=None,
    )
    chunk_index = 0
    while position < len(texts):
        # A layer resumed further along joins the pass when it reaches the texts it has not seen.
        ahead = [running.texts_done for running in sums.values() if running.texts_done > position]
        end = min([position + chunk_texts, len(texts), *ahead])
        active = {layer: s for layer, s in sums.items() if s.texts_done == position}
        chunk_tokens = _add_chunk(
            mt, active, texts[position:end], max_batch_tokens, limit, product_dtype
        )
        for running in active.values():
            running.texts_done, running.tokens = end, running.tokens + chunk_tokens
        progress.update(end - position)
        position = end
        chunk_index += 1
        if chunk_index % SAVE_EVERY_CHUNKS == 0 and position < len(texts):
            for running in sums.values():
                running.save_partial()
    progress.close()
    products_in = _product_dtype(models.determine_dtype(mt.model), product_dtype)
    results.update(
        {layer: running.finish(corpus.name, products_in) for layer, running in sums.items()}
    )
    return {layer: results[layer] for layer in sorted(results)}


def _sample_seed(
    mt: models.ModelAndTokenizer,
    layers: Sequence[int],
    corpus: corpora.Corpus,
    num_texts: int,
    cache_dir: Path | None,
    seed: int,
) -> int | None:
    """``seed`` when the statistics are of a sample (the corpus holds more than ``num_texts``
    texts), None when of all its texts. A cache file of the sample answers without counting
    the texts, so a released dataset is not loaded to find its statistics."""
    if cache_dir is not None and any(
        stats_file(cache_dir, mt, layer, corpus, num_texts, seed).is_file() for layer in layers
    ):
        return seed
    return seed if corpus.is_sampled(num_texts) else None


def _open_layer(
    mt: models.ModelAndTokenizer,
    layer: int,
    corpus: corpora.Corpus,
    num_texts: int,
    cache_dir: Path | None,
    sample_seed: int | None,
) -> SecondMoment | _LayerSum:
    """The layer's cached statistics, else its running sum (resumed from a partial file)."""
    projection = models.determine_mlp_output(mt.model, layer)
    expected = {
        "model": mt.name,
        "weight_sha256": weight_fingerprint(mt, layer),
        "layer": str(layer),
        "module": projection.module_path,
        "dataset": corpus.key,
        "num_texts": str(num_texts),
    }
    # Statistics of all the corpus's texts keep the metadata they had before samples were drawn.
    if sample_seed is not None:
        expected["sample_seed"] = str(sample_seed)
    path = stats_file(cache_dir, mt, layer, corpus, num_texts, sample_seed) if cache_dir else None
    if path is not None and path.is_file():
        moment, metadata = _read(path)
        _check(metadata, expected, path)
        return SecondMoment(moment, metadata)
    width = projection.in_features
    total = torch.zeros(width, width, dtype=torch.float64)
    running = _LayerSum(projection, total, 0, 0, expected, path)
    if running.partial is not None and running.partial.is_file():
        saved, metadata = _read(running.partial, key="sum")
        _check(metadata, expected, running.partial)
        running.total = saved.double()
        running.texts_done, running.tokens = int(metadata["texts_done"]), int(metadata["tokens"])
        logger.info(
            "resuming statistics from %s (%d texts done)", running.partial, running.texts_done
        )
    running.total = running.total.to(models.determine_device(mt.model))
    return running


def token_batches(
    tokenizer: Any,
    texts: Sequence[str],
    max_batch_tokens: int,
    max_length: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """``texts`` tokenized (truncated to ``max_length``), longest first, right-padded into
    batches of at most ``max_batch_tokens`` rows x width (a longer text is a batch of its own).

    Sorting keeps the padding small; longest first makes the first batch the largest, so a batch
    that does not fit in memory fails at once. Texts without tokens are skipped.
    """
    if max_batch_tokens < 1:
        raise errors.UsageError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)[
        "input_ids"
    ]
    rows = sorted((ids for ids in encoded if ids), key=len, reverse=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = 0
    while start < len(rows):
        width = len(rows[start])
        count = max(1, min(len(rows) - start, max_batch_tokens // width))
        batch = rows[start : start + count]
        input_ids = torch.full((count, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((count, width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        yield {"input_ids": input_ids, "attention_mask": attention_mask}
        start += count


@torch.no_grad()
def _add_chunk(
    mt: models.ModelAndTokenizer,
    sums: Mapping[int, _LayerSum],
    texts: Sequence[str],
    max_batch_tokens: int,
    max_length: int | None,
    product_dtype: torch.dtype | None,
) -> int:
    """Add ``K^T K`` of each layer's keys over ``texts`` to its running total (in place); return
    the number of tokens."""
    device = models.determine_device(mt.model)
    tokens = 0
    for batch in token_batches(mt.tokenizer, texts, max_batch_tokens, max_length):
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        mask = inputs["attention_mask"].bool()
        with _adding_key_products(mt.model, sums, mask, product_dtype):
            # Only the keys are read: the blocks above the deepest layer and the LM head never run.
            hooks.run_until_layer(mt.model, max(sums), inputs)
        tokens += int(mask.sum())
    return tokens


def _adding_key_products(
    model: torch.nn.Module,
    sums: Mapping[int, _LayerSum],
    mask: torch.Tensor,
    product_dtype: torch.dtype | None,
) -> contextlib.AbstractContextManager[dict[int, hooks.Traced]]:
    """While active, each forward adds ``K^T K`` of each layer's keys at ``mask`` to the layer's
    total as the keys pass, so no layer's keys outlive its own block."""

    def add_products(layer: int, keys: torch.Tensor) -> None:
        selected = keys[mask]
        selected = selected.to(_product_dtype(selected.dtype, product_dtype))
        sums[layer].total.add_(selected.T @ selected)

    projections = {layer: running.projection.module_path for layer, running in sums.items()}
    return hooks.trace(model, projections, edit_input=add_products)


def _product_dtype(keys_dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    return requested or torch.promote_types(keys_dtype, torch.float32)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
