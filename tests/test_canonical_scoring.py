"""The canonical-examples losses checked by hand: every example scored alone, one token at a time,
against the batched, padded computations (``training_loss``, ``example_scores``, ``mean_nll``,
``kl_to_reference``) on a tiny random GPT-2. A wrong mask, sign, normalisation or padding shows."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import pytest
import torch

from remedi import models
from remedi.canon import experiment, scoring
from remedi.data.canonical import CanonicalExample
from remedi.methods.tuning import Trainable
from tests.conftest import tiny_gpt2

# Examples of different lengths, so that batches are padded.
EXAMPLES = [
    CanonicalExample("Mira lives in", " the city of Oslo", " the town of Paris"),
    CanonicalExample("The capital of Peru is", " Lima", " Cusco in the south"),
    CanonicalExample("Bo works for", " a bank", " the city"),
]
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def model(tokenizer) -> torch.nn.Module:
    return tiny_gpt2(tokenizer, initializer_range=0.3).double().requires_grad_(False)


def suffix_nll_by_hand(model, tokenizer, prefix: str, suffix: str) -> tuple[float, int]:
    """Summed NLL of the suffix's tokens given the prefix, one unpadded row, token by token."""
    prefix_ids = list(tokenizer(prefix)["input_ids"])
    suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([prefix_ids + suffix_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = 0.0
    for position in range(len(prefix_ids), ids.shape[1]):
        total -= float(log_probs[position - 1, ids[0, position]])
    return total, len(suffix_ids)


def by_hand(model, tokenizer, second: bool = False) -> list[tuple[float, int]]:
    return [
        suffix_nll_by_hand(model, tokenizer, ex.prefix, (ex.suffix2 or "") if second else ex.suffix)
        for ex in EXAMPLES
    ]


def test_training_loss_is_the_per_token_mean_by_loss_type(model, tokenizer):
    first = [nll / count for nll, count in by_hand(model, tokenizer)]
    second = [nll / count for nll, count in by_hand(model, tokenizer, second=True)]
    expected = {
        "good": sum(first) / 3,
        "bad": -sum(first) / 3,
        "balance": sum(abs(a - b) for a, b in zip(first, second, strict=True)) / 3,
        "good-v-bad": sum(a - b for a, b in zip(first, second, strict=True)) / 3,
    }
    for loss_type, value in expected.items():
        loss = scoring.training_loss(model, tokenizer, EXAMPLES, loss_type, 64, DEVICE)
        # float32 log-softmax inside: agreement to float32 precision.
        assert float(loss) == pytest.approx(value, rel=1e-5), loss_type


def test_example_scores_are_summed_suffix_nlls_by_loss_type(model, tokenizer):
    first = [nll for nll, _ in by_hand(model, tokenizer)]
    second = [nll for nll, _ in by_hand(model, tokenizer, second=True)]
    expected = {
        "good": first,
        "bad": [-a for a in first],
        "balance": [abs(a - b) for a, b in zip(first, second, strict=True)],
        "good-v-bad": [a - b for a, b in zip(first, second, strict=True)],
    }
    for loss_type, values in expected.items():
        for batch_size in (1, 2, 3):  # batches of one and padded batches agree
            scores = scoring.example_scores(
                model, tokenizer, EXAMPLES, loss_type, 64, DEVICE, batch_size
            )
            assert scores.tolist() == pytest.approx(values, rel=1e-5), (loss_type, batch_size)


def test_mean_nll_per_token_and_per_example(model, tokenizer):
    pairs = by_hand(model, tokenizer)
    total, tokens = sum(nll for nll, _ in pairs), sum(count for _, count in pairs)
    per_token = scoring.mean_nll(model, tokenizer, EXAMPLES, 64, DEVICE, 2, per="token")
    per_example = scoring.mean_nll(model, tokenizer, EXAMPLES, 64, DEVICE, 2, per="example")
    assert per_token == pytest.approx(total / tokens, rel=1e-5)
    assert per_example == pytest.approx(total / 3, rel=1e-5)
    assert math.isnan(scoring.mean_nll(model, tokenizer, [], 64, DEVICE, 2, per="token"))


def test_kl_to_reference_is_summed_over_tokens_and_averaged_over_texts(model, tokenizer):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in edited.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))

    @contextlib.contextmanager
    def reference() -> Iterator[torch.nn.Module]:
        yield model

    texts = [CanonicalExample("", "Mira lives in the city of Oslo."), CanonicalExample("", "Hi.")]
    trainable = Trainable(edited, list(edited.parameters()), reference)
    kl = experiment.kl_to_reference(trainable, _mt(model, tokenizer), texts, 64)

    expected = 0.0
    for text in texts:
        ids = torch.tensor([tokenizer(text.suffix)["input_ids"]])
        with torch.no_grad():
            p = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            q = torch.log_softmax(edited(input_ids=ids).logits[0].double(), dim=-1)
        # KL(original || edited) at every position of the text, padding never counted.
        expected += float((p.exp() * (p - q)).sum())
    assert float(kl) == pytest.approx(expected / len(texts), rel=1e-4)
    assert float(kl) > 0
    same = Trainable(model, [], reference)
    assert float(experiment.kl_to_reference(same, _mt(model, tokenizer), texts, 64)) == 0.0


def _mt(model, tokenizer) -> models.ModelAndTokenizer:
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny")
