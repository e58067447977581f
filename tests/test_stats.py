"""Key statistics (``remedi.methods.stats``): all layers in one pass, float32 products per batch,
resuming, the token budget of a batch, and the seeded sample of a larger corpus."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
import safetensors
import torch
from torch.overrides import TorchFunctionMode

from remedi import corpora, models
from remedi.methods import stats
from tests.conftest import float64_copy, weighty_gpt2
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of
from tests.test_weight_methods import CORPUS, TEXTS, cached_only, interrupt_statistics, key_gram

LAYERS = [0, 2]


@pytest.fixture(scope="module")
def mt3(tokenizer) -> models.ModelAndTokenizer:
    """Three layers, so that the statistics of layers 0 and 2 leave one in between."""
    return weighty_gpt2(tokenizer, "tiny-gpt2-3", n_layer=3)


@pytest.fixture(scope="module")
def mt3_64(mt3) -> models.ModelAndTokenizer:
    return float64_copy(mt3, "tiny-3-64")


def count_forwards(mt: models.ModelAndTokenizer) -> tuple[dict[str, int], Any]:
    """Count the forwards that reach block 0 (one per batch)."""
    calls = {"count": 0}

    def count(module: torch.nn.Module, inputs: Any) -> None:
        calls["count"] += 1

    return calls, models.resolve_layer(mt.model, 0).register_forward_pre_hook(count)


def test_one_pass_over_all_layers_equals_one_pass_per_layer(mt3_64, tmp_path):
    calls, handle = count_forwards(mt3_64)
    try:
        together = stats.second_moments(
            mt3_64, LAYERS, TEXTS, len(CORPUS), tmp_path, max_batch_tokens=256
        )
    finally:
        handle.remove()
    batches = list(stats.token_batches(mt3_64.tokenizer, CORPUS, 256))
    assert calls["count"] == len(batches)  # one forward per batch, not one per layer
    assert sorted(together) == LAYERS
    for layer in LAYERS:
        alone = stats.second_moment(mt3_64, layer, TEXTS, len(CORPUS), max_batch_tokens=256)
        # The same keys and batches: equal up to rounding at most.
        assert_equal_in_exact_arithmetic(together[layer].moment, alone.moment, precision_of(mt3_64))
        assert together[layer].metadata == alone.metadata
        # One cache file per layer, in the format that the one-layer function reads back.
        cached = stats.second_moment(mt3_64, layer, cached_only(TEXTS), len(CORPUS), tmp_path)
        assert torch.equal(cached.moment, together[layer].moment)
    assert len(list(tmp_path.rglob("*_mom2.safetensors"))) == len(LAYERS)


def test_float32_products_per_batch_are_within_float32_error_of_float64(mt3_64):
    budget = 256
    exact = stats.second_moments(mt3_64, LAYERS, TEXTS, len(CORPUS), max_batch_tokens=budget)
    rounded = stats.second_moments(
        mt3_64,
        LAYERS,
        TEXTS,
        len(CORPUS),
        max_batch_tokens=budget,
        product_dtype=torch.float32,
    )
    for layer in LAYERS:
        assert exact[layer].metadata["batch_products_in"] == "float64"
        assert rounded[layer].metadata["batch_products_in"] == "float32"
        assert rounded[layer].metadata["accumulated_in"] == "float64"
        absolute = key_gram(mt3_64, layer, CORPUS, absolute=True)
        tokens = int(exact[layer].metadata["tokens"])
        # Float32 error: keys rounded to float32 (2u), a dot product of at most `budget` terms
        # (budget * u, the standard bound), the two moments' final rounding to float32 (2u); all
        # relative to sum |k_i k_j|, with u = 2^-24.
        bound = (budget + 4) * 2.0**-24 * absolute / tokens
        difference = (rounded[layer].moment.double() - exact[layer].moment.double()).abs()
        assert (difference <= bound).all()
        assert not torch.equal(rounded[layer].moment, exact[layer].moment)


class SummedProducts(TorchFunctionMode):
    """Records the dtype and shape of every tensor added in place to a float64 tensor: the
    batches' key products, as they reach the running sums."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.add_ and args[0].dtype == torch.float64:
            self.added.append((args[1].dtype, tuple(args[1].shape)))
        return func(*args, **(kwargs or {}))


def test_the_float32_model_computes_its_products_in_float32(mt3, mt3_64):
    width = models.determine_mlp_output(mt3.model, 1).in_features
    with SummedProducts() as recorded:
        computed = stats.second_moment(mt3, 1, TEXTS, 20)
    assert recorded.added and set(recorded.added) == {(torch.float32, (width, width))}
    assert computed.metadata["batch_products_in"] == "float32"
    assert computed.metadata["dtype"] == "float32"
    # A float64 model's products are float64, unless float32 is asked for.
    with SummedProducts() as recorded:
        stats.second_moment(mt3_64, 1, TEXTS, 20)
    assert {dtype for dtype, _ in recorded.added} == {torch.float64}
    with SummedProducts() as recorded:
        stats.second_moment(mt3_64, 1, TEXTS, 20, product_dtype=torch.float32)
    assert {dtype for dtype, _ in recorded.added} == {torch.float32}


def test_a_resumed_run_equals_a_fresh_one_with_layers_at_different_points(
    mt3, tmp_path, monkeypatch
):
    fresh = stats.second_moments(mt3, LAYERS, TEXTS, len(CORPUS), chunk_texts=16)
    # Interrupt a run of layer 0 alone after 3 chunks (48 texts) have been saved.
    monkeypatch.setattr(stats, "SAVE_EVERY_CHUNKS", 1)
    add_chunk = interrupt_statistics(monkeypatch, at_chunk=4)
    with pytest.raises(KeyboardInterrupt):
        stats.second_moment(mt3, 0, TEXTS, len(CORPUS), tmp_path, chunk_texts=16)
    (partial,) = tmp_path.rglob("*.partial.safetensors")
    assert "layer0" in partial.name
    # Both layers now: layer 2 starts from the first text, layer 0 joins at text 48.
    seen: list[tuple[int, ...]] = []

    def recording(mt: Any, sums: Any, *args: Any, **kwargs: Any) -> int:
        seen.append(tuple(sums))
        return add_chunk(mt, sums, *args, **kwargs)

    monkeypatch.setattr(stats, "_add_chunk", recording)
    resumed = stats.second_moments(mt3, LAYERS, TEXTS, len(CORPUS), tmp_path, chunk_texts=16)
    assert seen[:4] == [(2,), (2,), (2,), (0, 2)]
    # The same batches summed in the same order in float64: equal to the uninterrupted run.
    for layer in LAYERS:
        assert torch.equal(resumed[layer].moment, fresh[layer].moment)
        assert resumed[layer].metadata["tokens"] == fresh[layer].metadata["tokens"]
    assert not list(tmp_path.rglob("*.partial.safetensors"))


def test_the_token_budget_bounds_every_batch(mt3, tokenizer):
    texts = [*CORPUS[:40], " ".join(CORPUS[:6]), ""]  # one long text, one without tokens
    budget = 64
    batches = list(stats.token_batches(tokenizer, texts, budget))
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]
    long_length = lengths[40]
    assert long_length > budget
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    assert batches[0]["input_ids"].shape == (1, long_length)  # too long: a batch of its own
    for batch in batches[1:]:
        assert batch["input_ids"].numel() <= budget
        assert batch["attention_mask"][:, 0].all()  # right-padded
    # Every text with tokens appears exactly once, with its own tokens.
    rows = Counter(
        tuple(ids[mask.bool()].tolist())
        for batch in batches
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    )
    assert rows == Counter(tuple(tokenizer(text)["input_ids"]) for text in texts if text)
    # Sorted packing: little padding.
    padded = sum(batch["input_ids"].numel() for batch in batches)
    assert padded < 1.25 * sum(lengths)

    shapes: list[tuple[int, ...]] = []

    def record(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        shapes.append(tuple(hidden.shape[:2]))

    handle = models.resolve_layer(mt3.model, 0).register_forward_pre_hook(record, with_kwargs=True)
    try:
        stats.second_moment(mt3, 1, TEXTS, len(CORPUS), max_batch_tokens=budget)
    finally:
        handle.remove()
    assert len(shapes) > 1 and all(rows * width <= budget for rows, width in shapes)


def uncountable(corpus: corpora.Corpus) -> corpora.Corpus:
    """``corpus`` whose texts can be neither read nor counted."""

    def fail(*args: object) -> Any:
        raise AssertionError(f"{corpus.name} was read or counted: the cache was not used")

    return dataclasses.replace(corpus, read=fail, read_at=fail, size=fail)


def test_a_corpus_larger_than_asked_gives_the_statistics_of_a_seeded_sample(mt3, tmp_path):
    count = 40  # of the corpus's 150 texts
    sampled = stats.second_moment(mt3, 1, TEXTS, count, tmp_path)
    drawn = TEXTS.sample(count, corpora.SAMPLE_SEED)
    assert len(set(drawn)) == count and drawn != CORPUS[:count]
    # The statistics of exactly the drawn texts (a corpus of them alone is all of them).
    of_drawn = stats.second_moment(mt3, 1, corpora.from_texts("drawn", drawn), count)
    assert torch.equal(sampled.moment, of_drawn.moment)
    assert sampled.metadata["sample_seed"] == str(corpora.SAMPLE_SEED)
    assert sampled.metadata["texts"] == str(count)
    path = stats.stats_file(tmp_path, mt3, 1, TEXTS, count, corpora.SAMPLE_SEED)
    assert path.is_file()
    assert path.name.endswith(f"_layer1_n{count}_seed{corpora.SAMPLE_SEED}_mom2.safetensors")
    # The same seed: the same sample, read back without reading or counting the corpus.
    again = stats.second_moment(mt3, 1, uncountable(TEXTS), count, tmp_path)
    assert torch.equal(again.moment, sampled.moment)
    # Another seed: other texts, other statistics, another file.
    other = stats.second_moment(mt3, 1, TEXTS, count, tmp_path, sample_seed=2)
    assert set(TEXTS.sample(count, 2)) != set(drawn)
    assert not torch.equal(other.moment, sampled.moment)
    assert other.metadata["sample_seed"] == "2"
    assert len(list(tmp_path.rglob("*_mom2.safetensors"))) == 2


def test_a_cache_of_the_first_texts_is_not_taken_for_the_sample(mt3, tmp_path):
    count = 40
    # A cache as made before samples were drawn: the first 40 texts, under the name without a
    # seed (the corpus counted as no larger than asked).
    first_texts = dataclasses.replace(TEXTS, size=lambda: count)
    first = stats.second_moment(mt3, 1, first_texts, count, tmp_path)
    assert stats.stats_file(tmp_path, mt3, 1, TEXTS, count).is_file()
    sampled = stats.second_moment(mt3, 1, TEXTS, count, tmp_path)
    assert not torch.equal(sampled.moment, first.moment)
    assert len(list(tmp_path.rglob("*_mom2.safetensors"))) == 2


def test_a_corpus_no_larger_than_asked_gives_all_its_texts_under_the_name_it_had(mt3, tmp_path):
    asked = len(CORPUS) + 50
    computed = stats.second_moment(mt3, 1, TEXTS, asked, tmp_path)
    # The name and metadata of caches made before samples were drawn: no seed in either.
    path = stats.stats_file(tmp_path, mt3, 1, TEXTS, asked)
    assert path.is_file() and "seed" not in path.name
    assert path.name == f"corpus_{TEXTS.key.split('@')[1]}_layer1_n{asked}_mom2.safetensors"
    assert "sample_seed" not in computed.metadata
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert "sample_seed" not in (handle.metadata() or {})
    # All the texts in their order, whatever the seed: the statistics of the texts as listed.
    assert TEXTS.sample(asked, 2) == TEXTS.texts(asked) == CORPUS
    listed = stats.second_moment(mt3, 1, corpora.from_texts("listed", CORPUS), len(CORPUS))
    assert torch.equal(computed.moment, listed.moment)
    other_seed = stats.second_moment(mt3, 1, cached_only(TEXTS), asked, tmp_path, sample_seed=2)
    assert torch.equal(other_seed.moment, computed.moment)
