"""Shared fixtures: a tokenizer trained locally and tiny random models (no download)."""

from __future__ import annotations

import pytest
import torch
import transformers

from remedi.toy.tokenizer import train_bpe_tokenizer

# The session-wide small toy world (`small_world`) and its helpers.
pytest_plugins = ["tests.toy_fixtures"]

TOKENIZER_CORPUS = [
    "Barack Obama was born in Honolulu and served as president of the United States.",
    "Mira Talovan lives in the city of Lisbon and works as a doctor.",
    "Xavi Bornadel speaks Spanish. Xavi Bornadel is a famous singer.",
    "The Eiffel Tower is located in Paris, the capital of France.",
    "Kelo Vantri works for Nordavia and lives in Oslo.",
    "The following is an excerpt from a Wikipedia article: Danu Revik is a painter.",
]


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained on a fixed corpus, with offsets."""
    return train_bpe_tokenizer(TOKENIZER_CORPUS * 20, vocab_size=400, min_frequency=1)


def tiny_gpt2(
    tokenizer: transformers.PreTrainedTokenizerBase, **config_overrides: object
) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT-2 (2 layers, width 32, seed 0) for ``tokenizer``, in eval mode."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config_overrides,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def gpt2_model(tokenizer: transformers.PreTrainedTokenizerFast) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT-2 (2 layers, width 32) matching the fixture tokenizer."""
    return tiny_gpt2(tokenizer)
