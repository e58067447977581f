"""Key statistics (``remedi.methods.stats``): all layers in one pass, float32 products per batch,
resuming, and the token budget of a batch."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from remedi import models
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
