"""Tests for remedi.models: model families, layer paths, and loading."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import tokenizers
import torch
import transformers

from remedi import models
from remedi.toy.build import toy_world_paths
from tests.model_fixtures import (
    DECODER_SIZES,
    FAMILY_CONFIGS,
    HIDDEN_SIZE,
    NUM_LAYERS,
    REQUIRED_FAMILIES,
    VOCAB_SIZE,
    tiny_model,
)
from tests.numerics import assert_equal_in_exact_arithmetic, float_dtypes_used, precision_of
from tests.toy_fixtures import BuiltToyWorld, toy_dirs


def block_outputs(model: torch.nn.Module, blocks: list[torch.nn.Module], input_ids: torch.Tensor):
    """Run the model, returning each block's output hidden state and the model's outputs."""
    outputs: list[torch.Tensor] = []

    def record(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [block.register_forward_hook(record) for block in blocks]
    try:
        with torch.no_grad():
            result = model(input_ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, result


def test_registry_covers_required_families():
    assert set(models.MODEL_FAMILIES) >= REQUIRED_FAMILIES
    assert set(FAMILY_CONFIGS) == set(models.MODEL_FAMILIES), "every family needs a tiny test"


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_each_family_records_the_precision_its_float64_model_computes_in(model_type: str):
    # The table in remedi.models says which families compute parts of a float64 model in
    # float32; here every operation of a float64 forward and backward pass is watched.
    model = tiny_model(model_type).double()
    inputs = torch.arange(3, 10).view(1, 7)
    family = models.MODEL_FAMILIES[model_type]

    def forward_and_backward() -> None:
        model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.sum().backward()

    try:
        used = float_dtypes_used(forward_and_backward)
    except RuntimeError as error:  # a family with no float64 kernel for some operation
        assert "cannot run in float64" in family.float32_inside, (
            f"{model_type} cannot run in float64 ({error}); record it in MODEL_FAMILIES"
        )
        return
    lower = {dtype: sorted(ops) for dtype, ops in used.items() if dtype != torch.float64}
    assert set(lower) <= {torch.float32}, lower
    if family.float32_inside:
        assert lower, f"{model_type} is recorded as computing in float32 but does not"
        assert precision_of(model) == torch.float32
    else:
        assert not lower, f"{model_type} computes in float32 ({lower}): record it in MODEL_FAMILIES"
        assert precision_of(model) == torch.float64


def test_an_unregistered_family_is_not_trusted_to_compute_in_float64():
    config = transformers.GPT2Config(n_embd=HIDDEN_SIZE, n_layer=1, n_head=2, vocab_size=16)
    model = transformers.GPT2LMHeadModel(config).double()
    model.config.model_type = "not_registered"
    assert models.computation_precision(model) == torch.float32
    assert models.computation_precision(model.float()) == torch.float32
    assert models.computation_precision(tiny_model("gpt2").double()) == torch.float64
    assert models.computation_precision(tiny_model("gpt2").bfloat16()) == torch.bfloat16


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_family_layers_are_the_residual_stream(model_type: str):
    layers_path = FAMILY_CONFIGS[model_type][1]
    model = tiny_model(model_type)
    assert model.config.model_type == model_type

    assert models.determine_layers(model) == tuple(range(NUM_LAYERS))
    assert models.determine_hidden_size(model) == HIDDEN_SIZE
    paths = models.determine_layer_paths(model)
    assert paths == tuple(f"{layers_path}.{layer}" for layer in range(NUM_LAYERS))
    assert models.determine_layer_paths(model, [1]) == (f"{layers_path}.1",)
    blocks = [models.resolve_layer(model, layer) for layer in range(NUM_LAYERS)]
    assert blocks == [model.get_submodule(path) for path in paths]
    # The generic search, used for unregistered families, agrees with the registry.
    assert models.find_layers_path(model) == layers_path

    input_ids = torch.randint(0, VOCAB_SIZE, (2, 5))
    outputs, result = block_outputs(model, blocks, input_ids)
    assert len(result.hidden_states) == NUM_LAYERS + 1
    # hidden_states[i + 1] is the output of block i, except the last, which most families
    # return after the final layer norm.
    for layer in range(NUM_LAYERS - 1):
        assert outputs[layer].shape == (2, 5, HIDDEN_SIZE)
        torch.testing.assert_close(outputs[layer], result.hidden_states[layer + 1])
    assert outputs[-1].shape == (2, 5, HIDDEN_SIZE)


def test_model_and_tokenizer_properties(gpt2_model, tokenizer):
    mt = models.ModelAndTokenizer(model=gpt2_model, tokenizer=tokenizer, name="tiny")
    assert mt.num_layers == 2
    assert mt.hidden_size == 32
    assert mt.layer_paths == ("transformer.h.0", "transformer.h.1")
    assert mt.device == torch.device("cpu")
    assert mt.dtype == torch.float32
    # determine_* accept the pair as well as the bare model.
    assert models.determine_layer_paths(mt, [1]) == ("transformer.h.1",)
    assert models.resolve_layer(mt, 0) is gpt2_model.transformer.h[0]


def test_unregistered_family_uses_generic_search():
    config = transformers.BioGptConfig(**{**DECODER_SIZES, "num_key_value_heads": None})
    assert config.model_type not in models.MODEL_FAMILIES
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert models.determine_layer_paths(model, [0, 2]) == ("biogpt.layers.0", "biogpt.layers.2")
    assert models.determine_layers(model) == (0, 1, 2)
    assert models.determine_hidden_size(model) == HIDDEN_SIZE


def test_base_model_without_lm_head(gpt2_model):
    assert models.determine_layer_paths(gpt2_model.transformer) == ("h.0", "h.1")


class _NoBlocksModel(transformers.PreTrainedModel):
    config_class = transformers.PretrainedConfig

    def __init__(self, config: transformers.PretrainedConfig) -> None:
        super().__init__(config)
        self.proj = torch.nn.Linear(4, 4)


def test_unknown_model_class_error_names_it():
    model = _NoBlocksModel(transformers.PretrainedConfig(num_hidden_layers=2))
    with pytest.raises(ValueError, match=r"_NoBlocksModel.*MODEL_FAMILIES"):
        models.determine_layer_paths(model)
    with pytest.raises(ValueError, match=r"Sequential.*no `config`"):
        models.determine_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("layer", [-1, 2, 10])
def test_layer_out_of_range_names_valid_range(gpt2_model, layer: int):
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        models.determine_layer_paths(gpt2_model, [0, layer])
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        models.resolve_layer(gpt2_model, layer)


def test_default_dtype_is_half_only_for_big_models_on_gpu():
    gptj = transformers.GPTJConfig()  # GPT-J-6B's sizes
    small = transformers.GPT2Config()  # GPT-2 small, 124M parameters
    assert models.estimate_num_parameters(gptj) > 5_000_000_000
    assert models.estimate_num_parameters(small) < 200_000_000
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert models.default_dtype(gptj, cpu) == torch.float32
    assert models.default_dtype(small, cuda) == torch.float32
    assert models.default_dtype(gptj, cuda) in (torch.float16, torch.bfloat16)
    assert models.default_dtype(None, cuda, "gptj") in (torch.float16, torch.bfloat16)


def test_parse_dtype():
    assert models.parse_dtype("fp16") == torch.float16
    assert models.parse_dtype("torch.bfloat16") == torch.bfloat16
    assert models.parse_dtype(torch.float32) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        models.parse_dtype("fp8")


@pytest.fixture()
def saved_gpt2(tmp_path: Path, gpt2_model, tokenizer) -> Path:
    """A tiny GPT-2 saved with save_pretrained, its tokenizer saved without a pad token."""
    directory = tmp_path / "tiny-gpt2"
    gpt2_model.save_pretrained(directory)
    # A copy of the session tokenizer's backend: earlier tests' padding calls configure the shared
    # backend with a pad token, which a new wrapper would pick up.
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    unpadded = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
    )
    assert unpadded.pad_token is None
    unpadded.save_pretrained(directory)
    return directory


def test_load_model_from_directory(saved_gpt2: Path, gpt2_model):
    mt = models.load_model(str(saved_gpt2))
    assert mt.name == str(saved_gpt2)
    assert isinstance(mt.model, transformers.GPT2LMHeadModel)
    assert not mt.model.training
    assert all(not parameter.requires_grad for parameter in mt.model.parameters())
    assert mt.dtype == torch.float32
    assert mt.device == torch.device("cpu")
    assert mt.tokenizer.pad_token == mt.tokenizer.eos_token
    assert mt.model.config.pad_token_id == mt.tokenizer.pad_token_id
    torch.testing.assert_close(
        mt.model.transformer.wte.weight, gpt2_model.transformer.wte.weight, rtol=0, atol=0
    )


def test_load_model_fuses_gelu_into_one_kernel_computing_the_same_function(saved_gpt2: Path):
    from transformers.activations import NewGELUActivation

    fused = models.load_model(str(saved_gpt2))
    original = models.load_model(str(saved_gpt2), fused_activations=False)
    kinds = {type(module) for module in fused.model.modules()}
    assert models.TanhGELU in kinds and NewGELUActivation not in kinds
    assert NewGELUActivation in {type(module) for module in original.model.modules()}
    inputs = original.tokenizer(
        ["The Eiffel Tower is in", "Paris"], return_tensors="pt", padding=True
    )
    fused_model = fused.model.double()
    assert_equal_in_exact_arithmetic(
        fused_model(**inputs).logits,
        original.model.double()(**inputs).logits,
        precision_of(fused_model),  # the same function: only rounding differs
    )


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "codegen"])
def test_fuse_activations_replaces_every_tanh_gelu(model_type: str):
    model = tiny_model(model_type).double()
    inputs = torch.arange(12).view(2, 6)
    before = model(input_ids=inputs).logits
    assert models.fuse_activations(model) == model.config.num_hidden_layers
    assert models.fuse_activations(model) == 0  # nothing left to replace
    # The fused kernel and the six-operation formula differ only by rounding.
    assert_equal_in_exact_arithmetic(model(input_ids=inputs).logits, before, precision_of(model))


def test_random_init_is_the_same_architecture_with_fresh_seeded_weights(
    saved_gpt2: Path, gpt2_model
):
    state = torch.random.get_rng_state()
    first = models.load_model(str(saved_gpt2), random_init=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert first.name == models.random_model_name(str(saved_gpt2)) == f"{saved_gpt2}+random123456"
    assert first.model.config.to_dict() == models.load_model(str(saved_gpt2)).model.config.to_dict()
    assert first.tokenizer.get_vocab() == models.load_model(str(saved_gpt2)).tokenizer.get_vocab()
    assert all(not parameter.requires_grad for parameter in first.model.parameters())
    trained = dict(gpt2_model.named_parameters())
    # Every weight matrix is redrawn; none is the trained one.
    for name, parameter in first.model.named_parameters():
        if parameter.dim() > 1:
            assert not torch.equal(parameter, trained[name]), name
    again = models.load_model(str(saved_gpt2), random_init=True)
    other = models.load_model(str(saved_gpt2), random_init=True, random_seed=1)
    weight = first.model.transformer.h[0].attn.c_attn.weight
    assert torch.equal(again.model.transformer.h[0].attn.c_attn.weight, weight)
    assert not torch.equal(other.model.transformer.h[0].attn.c_attn.weight, weight)
    # The model's own initialisation: GPT-2 draws weights with std initializer_range.
    std = first.model.config.initializer_range
    assert weight.std().item() == pytest.approx(std, rel=0.1)


def test_load_model_explicit_dtype_wins(saved_gpt2: Path):
    assert models.load_model(str(saved_gpt2), dtype="bf16").dtype == torch.bfloat16
    assert models.load_model(str(saved_gpt2), dtype=torch.float16).dtype == torch.float16


def test_load_model_missing_directory_says_how_to_fix(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(models.ModelLoadError, match=r"no model directory.*save_pretrained"):
        models.load_model(str(missing))


@pytest.mark.parametrize("name", ["gpt2", "gptj", "EleutherAI/no-such-model"])
def test_load_model_offline_fails_fast_and_explains(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(models.ModelLoadError) as raised:
        models.load_model(name)
    message = str(raised.value)
    assert repr(name) in message
    assert "save_pretrained" in message
    assert "HF_HOME" in message


def test_aliases():
    assert models.MODEL_ALIASES["gptj"] == "EleutherAI/gpt-j-6B"
    assert models.MODEL_ALIASES["neox"] == "EleutherAI/gpt-neox-20b"
    assert models.MODEL_ALIASES["gpt2-xl"] == "gpt2-xl"
    assert models.MODEL_ALIASES["pythia-70m"] == "EleutherAI/pythia-70m"
    assert models.MODEL_ALIASES["pythia-12b"] == "EleutherAI/pythia-12b"


@pytest.mark.parametrize("name", ["toy", "toy-small", "toy-llama", "toy-small-gptj"])
def test_toy_names_load_the_built_toy_world(name: str, small_world: BuiltToyWorld, tmp_path: Path):
    # Building a toy world trains an LM (tested in test_toy*); here a complete build, the small
    # world's real files copied to where world ``name`` lives, must be found and loaded as it is.
    with toy_dirs(tmp_path / "models", tmp_path / "data"):
        paths = toy_world_paths(name)
        shutil.copytree(small_world.paths.model_dir, paths.model_dir)
        shutil.copytree(small_world.paths.data_dir, paths.data_dir)
        mt = models.load_model(name)
    assert mt.name == name
    saved = transformers.AutoModelForCausalLM.from_pretrained(small_world.paths.model_dir)
    loaded_state = mt.model.state_dict()
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded_state[key], value), key


def test_toy_name_pattern():
    for name in ("toy", "toy-small", "toy-neox", "toy-small-llama"):
        assert models.TOY_NAME_PATTERN.match(name), name
    for name in ("toys", "gpt2", "toy-", "mytoy"):
        assert not models.TOY_NAME_PATTERN.match(name), name


# ---------------------------------------------------------------------------------------
# Logits at chosen positions only.


def _right_padded_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two rows of random tokens, the second right-padded, and a mask of positions to read."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB_SIZE, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    positions[0, [1, 2, 6]] = True
    positions[1, [0, 3]] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask}, positions


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_logits_at_equal_the_full_logits_at_those_positions(model_type: str):
    # The LM head on 5 rows vs. on all 14 differs by summation order only. Mixtral's expert
    # kernel has no float64: it stays in float32.
    model = tiny_model(model_type)
    if model_type != "mixtral":
        model = model.double()
    inputs, positions = _right_padded_batch()
    assert models._keeps_logits_by_mask(model)
    with torch.no_grad():
        expected = model(**inputs).logits[positions]
        kept = models.logits_at(model, inputs, positions)
    assert kept.shape == (5, model.config.vocab_size)
    assert_equal_in_exact_arithmetic(kept, expected, precision_of(model))


class GPT2WithoutLogitsToKeep(transformers.GPT2LMHeadModel):
    """A causal LM whose forward has no ``logits_to_keep`` (as before transformers 4.50)."""

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, **kwargs):  # type: ignore[override]
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache
        )


def test_logits_at_fall_back_to_every_positions_logits():
    config = FAMILY_CONFIGS["gpt2"][0]()
    torch.manual_seed(0)
    model = GPT2WithoutLogitsToKeep(config).eval().double()
    inputs, positions = _right_padded_batch()
    assert not models._keeps_logits_by_mask(model)
    with torch.no_grad():
        expected = transformers.GPT2LMHeadModel.forward(model, **inputs).logits[positions]
        kept = models.logits_at(model, inputs, positions)
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
