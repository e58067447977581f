"""Tiny random causal LMs of every registered model family, built from configs (no download),
and a SentencePiece/Llama-style tokenizer trained locally (fixture ``llama_tokenizer``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import tokenizers
import torch
import transformers
from tokenizers import decoders, pre_tokenizers, processors, trainers

from tests.conftest import TOKENIZER_CORPUS

HIDDEN_SIZE = 32
NUM_LAYERS = 3
VOCAB_SIZE = 96

DECODER_SIZES = dict(
    hidden_size=HIDDEN_SIZE,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=64,
)

# One tiny config per registered family (and the path its decoder blocks must be at).
FAMILY_CONFIGS: dict[str, tuple[Callable[[], transformers.PretrainedConfig], str]] = {
    "gpt2": (
        lambda: transformers.GPT2Config(
            n_embd=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=2, vocab_size=VOCAB_SIZE
        ),
        "transformer.h",
    ),
    "gptj": (
        lambda: transformers.GPTJConfig(
            n_embd=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=2, rotary_dim=8, vocab_size=VOCAB_SIZE
        ),
        "transformer.h",
    ),
    "gpt_neo": (
        lambda: transformers.GPTNeoConfig(
            hidden_size=HIDDEN_SIZE,
            num_layers=NUM_LAYERS,
            num_heads=2,
            attention_types=[[["global", "local"], 1], [["global"], 1]],
            vocab_size=VOCAB_SIZE,
        ),
        "transformer.h",
    ),
    "gpt_neox": (
        lambda: transformers.GPTNeoXConfig(**DECODER_SIZES),
        "gpt_neox.layers",
    ),
    "codegen": (
        # CodeGen splits heads over 4 model-parallel shards: n_head must be a multiple of 4.
        lambda: transformers.CodeGenConfig(
            n_embd=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=4, rotary_dim=4, vocab_size=VOCAB_SIZE
        ),
        "transformer.h",
    ),
    "gpt_bigcode": (
        lambda: transformers.GPTBigCodeConfig(
            n_embd=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=2, vocab_size=VOCAB_SIZE
        ),
        "transformer.h",
    ),
    "bloom": (
        lambda: transformers.BloomConfig(
            hidden_size=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=2, vocab_size=VOCAB_SIZE
        ),
        "transformer.h",
    ),
    "falcon": (
        lambda: transformers.FalconConfig(
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=2,
            vocab_size=VOCAB_SIZE,
        ),
        "transformer.h",
    ),
    "mpt": (
        lambda: transformers.MptConfig(
            d_model=HIDDEN_SIZE, n_layers=NUM_LAYERS, n_heads=2, vocab_size=VOCAB_SIZE
        ),
        "transformer.blocks",
    ),
    "opt": (
        lambda: transformers.OPTConfig(
            hidden_size=HIDDEN_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=2,
            ffn_dim=64,
            word_embed_proj_dim=HIDDEN_SIZE,
            vocab_size=VOCAB_SIZE,
        ),
        "model.decoder.layers",
    ),
    "llama": (lambda: transformers.LlamaConfig(**DECODER_SIZES), "model.layers"),
    "mistral": (lambda: transformers.MistralConfig(**DECODER_SIZES), "model.layers"),
    "mixtral": (lambda: transformers.MixtralConfig(**DECODER_SIZES), "model.layers"),
    "qwen2": (lambda: transformers.Qwen2Config(**DECODER_SIZES), "model.layers"),
    "qwen3": (lambda: transformers.Qwen3Config(**DECODER_SIZES, head_dim=16), "model.layers"),
    "gemma": (lambda: transformers.GemmaConfig(**DECODER_SIZES, head_dim=16), "model.layers"),
    "gemma2": (lambda: transformers.Gemma2Config(**DECODER_SIZES, head_dim=16), "model.layers"),
    "gemma3_text": (
        lambda: transformers.Gemma3TextConfig(**DECODER_SIZES, head_dim=16),
        "model.layers",
    ),
    "phi": (lambda: transformers.PhiConfig(**DECODER_SIZES), "model.layers"),
    "phi3": (
        lambda: transformers.Phi3Config(
            **DECODER_SIZES, pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),
        "model.layers",
    ),
    "olmo": (lambda: transformers.OlmoConfig(**DECODER_SIZES), "model.layers"),
    "olmo2": (lambda: transformers.Olmo2Config(**DECODER_SIZES), "model.layers"),
    "starcoder2": (lambda: transformers.Starcoder2Config(**DECODER_SIZES), "model.layers"),
}

REQUIRED_FAMILIES = {
    "gpt2",
    "gptj",
    "gpt_neo",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "gemma",
    "phi",
    "opt",
    "bloom",
    "falcon",
}


def tiny_model(model_type: str, seed: int = 0, **overrides: object) -> transformers.PreTrainedModel:
    """A tiny random model of a registered family, in eval mode; overrides set config fields."""
    config = FAMILY_CONFIGS[model_type][0]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


# ---------------------------------------------------------------------------------------
# Tokenizers.

LLAMA_BOS, LLAMA_EOS, LLAMA_UNK = "<s>", "</s>", "<unk>"
METASPACE = "\u2581"  # "▁", SentencePiece's word-boundary mark


def build_llama_tokenizer(
    texts: Iterable[str] = TOKENIZER_CORPUS * 20, vocab_size: int = 400
) -> transformers.PreTrainedTokenizerFast:
    """A SentencePiece/Llama-style tokenizer trained on ``texts``.

    BPE over Metaspace pieces (a space becomes "▁" and starts the next piece, "▁Lisbon"), and,
    like Llama's, it prepends ``<s>`` (BOS) to every text it encodes with special tokens. EOS is
    ``</s>``, which also pads (what :func:`remedi.models.load_model` sets for Llama). Offsets
    are character offsets into the text; BOS has the empty offset (0, 0).
    """
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=LLAMA_UNK))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[LLAMA_UNK, LLAMA_BOS, LLAMA_EOS],
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    bos_id = backend.token_to_id(LLAMA_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A",
        pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B",
        special_tokens=[(LLAMA_BOS, bos_id)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        unk_token=LLAMA_UNK,
        pad_token=LLAMA_EOS,
    )


@pytest.fixture(scope="session")
def llama_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A Llama-style tokenizer that adds BOS (see :func:`build_llama_tokenizer`)."""
    return build_llama_tokenizer()


def tiny_llama(
    tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0, **overrides: object
) -> transformers.LlamaForCausalLM:
    """A tiny random Llama (3 layers, width 32) for ``tokenizer``, in eval mode."""
    model = tiny_model(
        "llama",
        seed=seed,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    assert isinstance(model, transformers.LlamaForCausalLM)
    return model
