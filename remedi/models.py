"""What a model is and where its layers are.

REMEDI reads and edits the residual stream at the output of one decoder block. Every model
family keeps its blocks somewhere else (``transformer.h`` in GPT-2, ``model.layers`` in Llama,
``gpt_neox.layers`` in Pythia), so this module holds one registry, :data:`MODEL_FAMILIES`,
keyed by ``config.model_type``. Adding a family is one :class:`ModelFamily` entry. Models of
families not in the registry still work when :func:`find_layers_path` can recognise their
stack of decoder blocks.
"""

from __future__ import annotations

import inspect
import logging
import operator
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, SupportsIndex

import torch
import transformers
from transformers.pytorch_utils import Conv1D

from remedi import errors, gguf_models, settings

logger = logging.getLogger(__name__)

MODEL_ALIASES: dict[str, str] = {
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "gptj": "EleutherAI/gpt-j-6B",
    "neox": "EleutherAI/gpt-neox-20b",
    **{
        f"pythia-{size}": f"EleutherAI/pythia-{size}"
        for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
    },
}

TOY_NAME_PATTERN = re.compile(r"^toy(-small)?(-[a-z0-9_]+)?$")


@dataclass(frozen=True)
class ModelFamily:
    """Where one model family keeps its decoder blocks, and how its config names its sizes."""

    layers_path: str
    """Dotted path from the causal LM to the ``ModuleList`` of decoder blocks."""
    hidden_size_key: str = "hidden_size"
    num_layers_key: str = "num_hidden_layers"
    mlp_out_path: str | None = None
    """Dotted path, relative to one decoder block, of the MLP's output projection (the matrix
    weight-editing methods such as ROME rewrite), e.g. ``mlp.c_proj``; None if not known."""
    mlp_in_path: str | None = None
    """Dotted path, relative to one decoder block, of the MLP's first projection, whose output
    (before the nonlinearity; the gate's in gated MLPs) has one entry per intermediate neuron,
    e.g. ``mlp.c_fc``, ``mlp.gate_proj`` (where Knowledge Neurons attributes, EasyEdit's
    ``input_ff_attr``); None if not known."""
    float32_inside: str = ""
    """What the family computes in float32 even when its weights and inputs are float64 (its
    code casts there), or "" if a float64 model computes everything in float64. Measured per
    family by recording the dtype of every operation of a float64 forward and backward pass
    (``tests/numerics.float_dtypes_used``; ``tests/test_models.py`` checks this table against
    that measurement). Two computations that agree in exact arithmetic agree only to the
    rounding of the lowest precision they run in: see :func:`computation_precision`."""


# Why a family's float64 model still computes in float32 (see ModelFamily.float32_inside).
_ROTARY = "rotary position angles (cos, sin) from a float32 inverse-frequency buffer"
_RMS_NORM = "RMSNorm (the hidden state is cast to float32 to normalise)"
_ROTARY_AND_RMS_NORM = f"{_RMS_NORM}; {_ROTARY}"

# The layout Llama set and most later decoders keep: blocks at model.layers, the MLP's output
# projection mlp.down_proj, RMSNorm and rotary positions.
_LLAMA_LAYOUT = ModelFamily(
    "model.layers",
    mlp_out_path="mlp.down_proj",
    mlp_in_path="mlp.gate_proj",
    float32_inside=_ROTARY_AND_RMS_NORM,
)

MODEL_FAMILIES: dict[str, ModelFamily] = {
    "gpt2": ModelFamily("transformer.h", "n_embd", "n_layer", "mlp.c_proj", "mlp.c_fc"),
    "gptj": ModelFamily("transformer.h", "n_embd", "n_layer", "mlp.fc_out", "mlp.fc_in"),
    "gpt_neo": ModelFamily(
        "transformer.h",
        "hidden_size",
        "num_layers",
        "mlp.c_proj",
        "mlp.c_fc",
        float32_inside="attention scores (query and key are cast to float32 before their product)",
    ),
    "gpt_neox": ModelFamily(
        "gpt_neox.layers",
        mlp_out_path="mlp.dense_4h_to_h",
        mlp_in_path="mlp.dense_h_to_4h",
        float32_inside=_ROTARY,
    ),
    "codegen": ModelFamily("transformer.h", "n_embd", "n_layer"),
    "gpt_bigcode": ModelFamily("transformer.h", "n_embd", "n_layer"),
    "bloom": ModelFamily(
        "transformer.h",
        "hidden_size",
        "n_layer",
        float32_inside="attention softmax and the ALiBi slopes",
    ),
    "falcon": ModelFamily("transformer.h", float32_inside=_ROTARY),
    "mpt": ModelFamily(
        "transformer.blocks",
        "d_model",
        "n_layers",
        float32_inside="attention softmax and the ALiBi slopes",
    ),
    "opt": ModelFamily("model.decoder.layers"),
    "llama": _LLAMA_LAYOUT,
    "mistral": _LLAMA_LAYOUT,
    "mixtral": ModelFamily(
        "model.layers",
        float32_inside="everything: the experts' grouped matrix product has no float64 kernel, "
        "so a Mixtral model cannot run in float64 at all",
    ),
    "qwen2": _LLAMA_LAYOUT,
    "qwen3": _LLAMA_LAYOUT,
    "gemma": _LLAMA_LAYOUT,
    "gemma2": replace(_LLAMA_LAYOUT, float32_inside=f"attention softmax; {_ROTARY_AND_RMS_NORM}"),
    "gemma3_text": _LLAMA_LAYOUT,
    "phi": ModelFamily("model.layers", float32_inside=_ROTARY),
    "phi3": _LLAMA_LAYOUT,
    "olmo": replace(_LLAMA_LAYOUT, float32_inside=f"LayerNorm (cast to float32); {_ROTARY}"),
    "olmo2": _LLAMA_LAYOUT,
    "starcoder2": ModelFamily("model.layers", float32_inside=_ROTARY),
}


class ModelLoadError(errors.RemediError, OSError):
    """A model or its tokenizer could not be loaded (offline, misspelled, or not saved)."""


class UnsupportedModelError(errors.UsageError):
    """A model whose decoder blocks or sizes remedi cannot find (register its family)."""


@dataclass
class ModelAndTokenizer:
    """A causal LM, frozen and in eval mode, with its tokenizer (which has a pad token)."""

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    name: str
    """The name or alias the model was asked for by (``"gptj"``, ``"toy"``, a directory)."""

    @property
    def device(self) -> torch.device:
        return determine_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return determine_dtype(self.model)

    @property
    def num_layers(self) -> int:
        return len(determine_layers(self.model))

    @property
    def hidden_size(self) -> int:
        return determine_hidden_size(self.model)

    @property
    def layer_paths(self) -> tuple[str, ...]:
        return determine_layer_paths(self.model)


def unwrap_model(model: torch.nn.Module | ModelAndTokenizer) -> torch.nn.Module:
    """Return the bare model of a :class:`ModelAndTokenizer`, or the model itself."""
    return model.model if isinstance(model, ModelAndTokenizer) else model


def _config_of(model: torch.nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no `config`; remedi works with Hugging Face causal LMs "
            "(transformers.PreTrainedModel), e.g. those from remedi.models.load_model"
        )
    return config


def _family_of(model: torch.nn.Module) -> ModelFamily | None:
    return MODEL_FAMILIES.get(getattr(_config_of(model), "model_type", ""))


def _text_config(config: Any) -> Any:
    """The config of the language model proper (multimodal configs nest it)."""
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def find_layers_path(model: torch.nn.Module | ModelAndTokenizer) -> str:
    """Find the ``ModuleList`` of decoder blocks of a causal LM of any family, by its shape.

    The blocks are the ``ModuleList`` of identical modules whose length is the config's layer
    count; without a layer count, the longest such list. Ties go to the list holding the most
    parameters (decoder blocks hold nearly all of them).
    """
    module = unwrap_model(model)
    num_layers = getattr(_text_config(_config_of(module)), "num_hidden_layers", None)
    stacks = [
        (name, stack)
        for name, stack in module.named_modules()
        if isinstance(stack, torch.nn.ModuleList)
        and len(stack) > 0
        and len({type(block) for block in stack}) == 1
    ]
    if isinstance(num_layers, int):
        stacks = [(name, stack) for name, stack in stacks if len(stack) == num_layers]
    if not stacks:
        raise UnsupportedModelError(
            f"cannot find the decoder blocks of {type(module).__name__} "
            f"(model_type={getattr(module.config, 'model_type', None)!r}): no ModuleList of "
            f"identical blocks{f' of length num_hidden_layers={num_layers}' if num_layers else ''}. "
            "Register the family in remedi.models.MODEL_FAMILIES with the dotted path of its "
            "decoder-block ModuleList."
        )

    def size(stack: torch.nn.ModuleList) -> tuple[int, int]:
        return len(stack), sum(parameter.numel() for parameter in stack.parameters())

    return max(stacks, key=lambda named: size(named[1]))[0]


def _layers_path(module: torch.nn.Module) -> str:
    family = _family_of(module)
    if family is not None:
        try:
            stack = module.get_submodule(family.layers_path)
        except AttributeError:
            stack = None  # e.g. the base model without its LM head: search instead
        if isinstance(stack, torch.nn.ModuleList):
            return family.layers_path
    return find_layers_path(module)


def _layer_stack(module: torch.nn.Module) -> torch.nn.ModuleList:
    stack = module.get_submodule(_layers_path(module))
    assert isinstance(stack, torch.nn.ModuleList)
    return stack


def determine_layers(model: torch.nn.Module | ModelAndTokenizer) -> tuple[int, ...]:
    """Return the indices of the model's decoder blocks: ``(0, ..., num_layers - 1)``."""
    module = unwrap_model(model)
    family = _family_of(module)
    num_layers = None
    if family is not None:
        num_layers = getattr(module.config, family.num_layers_key, None)
    if not isinstance(num_layers, int):
        num_layers = len(_layer_stack(module))
    return tuple(range(num_layers))


def determine_layer_paths(
    model: torch.nn.Module | ModelAndTokenizer, layers: Sequence[int] | None = None
) -> tuple[str, ...]:
    """Return the dotted module path of each layer's decoder block, e.g. ``transformer.h.3``.

    Raises:
        errors.UsageError: A layer is not in ``0 .. num_layers - 1``.
    """
    module = unwrap_model(model)
    all_layers = determine_layers(module)
    if layers is None:
        layers = all_layers
    for layer in layers:
        if not isinstance(layer, SupportsIndex) or not 0 <= operator.index(layer) < len(all_layers):
            raise errors.UsageError(
                f"layer {layer!r} is out of range for {type(module).__name__}, which has "
                f"{len(all_layers)} layers: valid layers are 0..{len(all_layers) - 1}"
            )
    layers_path = _layers_path(module)
    return tuple(f"{layers_path}.{operator.index(layer)}" for layer in layers)


def resolve_layer(model: torch.nn.Module | ModelAndTokenizer, layer: int) -> torch.nn.Module:
    """Return the decoder block module of one layer (its output is the residual stream)."""
    module = unwrap_model(model)
    (path,) = determine_layer_paths(module, [layer])
    return module.get_submodule(path)


@dataclass(frozen=True)
class MlpOutput:
    """Where one layer's MLP output projection is, and how its weight is laid out."""

    module_path: str
    """Dotted path of the projection module, e.g. ``transformer.h.3.mlp.c_proj``."""
    weight_name: str
    """Name of its weight in ``model.named_parameters()``."""
    transposed: bool
    """True for GPT-2's ``Conv1D``, whose weight is (in, out); False for ``Linear`` (out, in)."""
    in_features: int
    out_features: int
    bias_name: str | None = None
    """Name of its bias in ``model.named_parameters()``; None where it has none (Llama's
    ``down_proj``)."""


def determine_mlp_output(model: torch.nn.Module | ModelAndTokenizer, layer: int) -> MlpOutput:
    """Return the MLP output projection of ``layer`` (the matrix ROME and FT rewrite).

    Raises:
        errors.UsageError: The layer is out of range.
        UnsupportedModelError: The family has no registered ``mlp_out_path``.
    """
    module = unwrap_model(model)
    (layer_path,) = determine_layer_paths(module, [layer])
    family = _family_of(module)
    if family is None or family.mlp_out_path is None:
        raise UnsupportedModelError(
            f"do not know where the MLP output projection of {type(module).__name__} "
            f"(model_type={getattr(_config_of(module), 'model_type', None)!r}) is; register "
            "the family in remedi.models.MODEL_FAMILIES with its mlp_out_path (e.g. mlp.down_proj)"
        )
    path = f"{layer_path}.{family.mlp_out_path}"
    projection = module.get_submodule(path)
    weight = getattr(projection, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedModelError(f"{path} has no 2-d weight; check mlp_out_path of its family")
    transposed = isinstance(projection, Conv1D)
    in_features, out_features = weight.shape if transposed else weight.shape[::-1]
    bias_name = f"{path}.bias" if getattr(projection, "bias", None) is not None else None
    return MlpOutput(
        path, f"{path}.weight", transposed, int(in_features), int(out_features), bias_name
    )


def determine_mlp_input(model: torch.nn.Module | ModelAndTokenizer, layer: int) -> str:
    """Return the dotted path of ``layer``'s MLP first projection (``mlp_in_path``), whose output
    has one entry per intermediate neuron: the neuron ``i`` of that output feeds input ``i`` of
    the output projection (:func:`determine_mlp_output`) through the nonlinearity.

    Raises:
        errors.UsageError: The layer is out of range.
        UnsupportedModelError: The family has no registered ``mlp_in_path``, or the model has no
            module there (e.g. a fused gate and up projection).
    """
    module = unwrap_model(model)
    (layer_path,) = determine_layer_paths(module, [layer])
    family = _family_of(module)
    if family is not None and family.mlp_in_path is not None:
        path = f"{layer_path}.{family.mlp_in_path}"
        try:
            module.get_submodule(path)
            return path
        except AttributeError:
            pass
    raise UnsupportedModelError(
        f"do not know where the MLP's first projection of {type(module).__name__} "
        f"(model_type={getattr(_config_of(module), 'model_type', None)!r}) is; register "
        "its mlp_in_path (e.g. mlp.gate_proj) in remedi.models.MODEL_FAMILIES, or attribute "
        "at the output projection's input instead"
    )


def determine_hidden_size(model: torch.nn.Module | ModelAndTokenizer) -> int:
    """Return the width of the residual stream."""
    module = unwrap_model(model)
    return _hidden_size_from_config(_config_of(module))


def _hidden_size_from_config(config: Any) -> int:
    family = MODEL_FAMILIES.get(getattr(config, "model_type", ""))
    key = family.hidden_size_key if family is not None else "hidden_size"
    hidden_size = getattr(config, key, None)
    if not isinstance(hidden_size, int):
        hidden_size = getattr(_text_config(config), "hidden_size", None)
    if not isinstance(hidden_size, int):
        raise UnsupportedModelError(
            f"cannot read the hidden size from {type(config).__name__}; register the family "
            "in remedi.models.MODEL_FAMILIES with its hidden_size_key"
        )
    return hidden_size


def _num_layers_from_config(config: Any) -> int | None:
    family = MODEL_FAMILIES.get(getattr(config, "model_type", ""))
    key = family.num_layers_key if family is not None else "num_hidden_layers"
    num_layers = getattr(config, key, None)
    if not isinstance(num_layers, int):
        num_layers = getattr(_text_config(config), "num_hidden_layers", None)
    return num_layers if isinstance(num_layers, int) else None


def determine_device(model: torch.nn.Module | ModelAndTokenizer) -> torch.device:
    """Return the device that inputs should be sent to (that of the input embeddings)."""
    module = unwrap_model(model)
    get_input_embeddings = getattr(module, "get_input_embeddings", None)
    embeddings = get_input_embeddings() if callable(get_input_embeddings) else None
    if isinstance(embeddings, torch.nn.Module):
        for parameter in embeddings.parameters():
            return parameter.device
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")


def determine_dtype(model: torch.nn.Module | ModelAndTokenizer) -> torch.dtype:
    """Return the floating-point dtype of the model's weights."""
    module = unwrap_model(model)
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.get_default_dtype()


def computation_precision(model: torch.nn.Module | ModelAndTokenizer) -> torch.dtype:
    """The lowest floating-point precision the model's forward pass really computes in.

    That is the weights' dtype, except for a float64 model of a family that computes parts in
    float32 anyway (:attr:`ModelFamily.float32_inside`), or of an unregistered family, whose
    code nobody measured: float32 then. Two computations that are equal in exact arithmetic
    (a batch and its rows one by one, a cached pass and a plain one) agree only to the
    rounding of this precision, and which digits differ depends on the CPU's kernels.
    """
    dtype = determine_dtype(model)
    if dtype != torch.float64:
        return dtype
    family = _family_of(unwrap_model(model))
    if family is None or family.float32_inside:
        return torch.float32
    return dtype


def accepts_argument(model: torch.nn.Module | ModelAndTokenizer, name: str) -> bool:
    """Whether ``model``'s forward takes the keyword argument ``name``."""
    try:
        parameters = inspect.signature(unwrap_model(model).forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def cache_argument(model: torch.nn.Module | ModelAndTokenizer) -> str | None:
    """The name of the forward argument that takes a key/value cache (``cache`` since
    transformers 5.24, ``past_key_values`` before), or None if ``model`` takes neither."""
    for name in ("cache", "past_key_values"):
        if accepts_argument(model, name):
            return name
    return None


def cache_kwargs(
    model: torch.nn.Module | ModelAndTokenizer, cache: transformers.DynamicCache
) -> dict[str, Any]:
    """Forward arguments that pass ``cache`` to ``model`` and have it filled.

    Raises:
        UnsupportedModelError: The model's forward takes no cache.
    """
    name = cache_argument(model)
    if name is None:
        raise UnsupportedModelError(
            f"{type(unwrap_model(model)).__name__}.forward takes neither 'cache' nor "
            "'past_key_values'; run it without a key/value cache"
        )
    return {name: cache, "use_cache": True}


def _keeps_logits_by_mask(model: torch.nn.Module) -> bool:
    """Whether ``model(..., logits_to_keep=mask)`` runs the LM head only at a boolean mask's
    positions (transformers 5's causal LMs; older versions and custom models may not)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in parameters and hasattr(
        transformers.modeling_utils, "slice_logits_to_keep"
    )


def logits_at(
    model: torch.nn.Module | ModelAndTokenizer,
    inputs: Mapping[str, Any],
    positions: torch.Tensor,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """The LM's logits at the ``True`` entries of ``positions``, (count, vocab), row by row.

    ``positions`` is a boolean ``(batch, seq)`` mask over the tokenized batch. The LM head (a
    product with the whole vocabulary) runs only at those positions, through the model's own
    ``logits_to_keep``, so any final scaling or soft-capping it applies is kept. A model without
    that option computes every position's logits, which are then selected. ``forward_kwargs``
    go to the model (``use_cache`` is False unless given, e.g. with ``past_key_values``).
    """
    module = unwrap_model(model)
    positions = positions.to(device=determine_device(module), dtype=torch.bool)
    count = int(positions.sum())
    forward_kwargs.setdefault("use_cache", False)
    if _keeps_logits_by_mask(module):
        logits = module(**inputs, logits_to_keep=positions, **forward_kwargs).logits
        if logits.dim() == 2 and logits.shape[0] == count:
            return logits
        logger.warning(
            "%s returned logits of shape %s for %d kept positions; computing every position's "
            "logits instead",
            type(module).__name__,
            tuple(logits.shape),
            count,
        )
    logits = module(**inputs, **forward_kwargs).logits
    return logits[positions.to(logits.device)]


def estimate_num_parameters(config: Any) -> int | None:
    """Estimate a transformer's parameter count from its config, before loading any weights.

    Uses ``12 * layers * hidden^2 + vocab * hidden`` (attention, MLP, embeddings), which is
    within a small factor for every family here; ``None`` when the config lacks the sizes.
    """
    try:
        hidden_size = _hidden_size_from_config(config)
    except ValueError:
        return None
    num_layers = _num_layers_from_config(config)
    vocab_size = getattr(_text_config(config), "vocab_size", None) or 0
    if num_layers is None:
        return None
    return 12 * num_layers * hidden_size**2 + vocab_size * hidden_size


# Parameter counts of the paper's models by name, for a caller without their config.
_PARAMETERS_BY_NAME: tuple[tuple[str, int], ...] = (
    ("gpt-neox-20b", 20_000_000_000),
    ("neox", 20_000_000_000),
    ("pythia-12b", 12_000_000_000),
    ("pythia-6.9b", 6_900_000_000),
    ("gpt-j", 6_000_000_000),
    ("gptj", 6_000_000_000),
    ("gpt2-xl", 1_560_000_000),
)


def _parameters_by_name(name: str) -> int | None:
    for known, count in _PARAMETERS_BY_NAME:
        if known in name:
            return count
    return None


def default_dtype(
    config: Any, device: torch.device, name: str = "", experiment: str | None = None
) -> torch.dtype:
    """Pick the dtype to load a model in for ``experiment``: its reference's.

    Each experiment (a key of :data:`remedi.settings.PRECISION`) loads big models on a GPU in
    the half precision its reference used, from the size its reference switched at (REMEDI:
    float16 for GPT-J and larger; ROME, MEMIT, FT, the editing problems, Gu et al.: float32);
    None is :data:`remedi.settings.DEFAULT_PRECISION` (bfloat16 from a billion parameters). On a
    CPU every model is float32. bfloat16 falls back to float16 on a GPU without it. Without a
    readable config, the paper's models are sized by name.

    Only ``device.type`` is read, so ``torch.device("cuda")`` may be passed without a GPU.
    """
    if device.type != "cuda":
        return torch.float32
    chosen = settings.precision(experiment)
    if chosen.half is None:
        return torch.float32
    num_parameters = estimate_num_parameters(config) if config is not None else None
    if num_parameters is None:
        num_parameters = _parameters_by_name(name)
    if num_parameters is None or num_parameters < chosen.half_from:
        return torch.float32
    half = parse_dtype(chosen.half)
    if half == torch.bfloat16 and not (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ):
        return torch.float16
    return half


_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Turn ``"fp16"``, ``"bfloat16"``, ``"torch.float32"``, ... or a torch dtype into a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPE_NAMES:
        raise errors.UsageError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPE_NAMES))}"
        )
    return _DTYPE_NAMES[key]


def _resolve_name(name_or_path: str) -> str:
    """Map an alias, a toy-world name, or a path to what ``from_pretrained`` should load."""
    if TOY_NAME_PATTERN.match(name_or_path) and not Path(name_or_path).exists():
        # Imported here: the toy world builds models with this module (no import cycle).
        from remedi.toy.build import ensure_toy_world

        return str(ensure_toy_world(name_or_path).model_dir)
    if name_or_path in MODEL_ALIASES:
        return MODEL_ALIASES[name_or_path]
    if name_or_path in gguf_models.PACKAGED_GGUF_MODELS and not Path(name_or_path).exists():
        spec = gguf_models.PACKAGED_GGUF_MODELS[name_or_path]
        if not gguf_models.is_converted(spec):
            raise ModelLoadError(gguf_models.missing_model_message(name_or_path))
        return str(gguf_models.converted_model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    # Hub names are "name" or "owner/name"; anything else can only be a directory.
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(
            f"no model directory at {path}: pass a directory written by "
            "`model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)`, "
            "a Hugging Face hub name (e.g. EleutherAI/gpt-j-6B), or an alias "
            f"({', '.join([*MODEL_ALIASES, *gguf_models.PACKAGED_GGUF_MODELS])}, toy)"
        )
    return name_or_path


def _hub_kwargs() -> dict[str, Any]:
    """Read the Hugging Face offline and cache settings at call time.

    The hub library reads them once, at import; reading them here lets a running process
    change them, and makes offline loads fail at once instead of retrying the network.
    """
    kwargs: dict[str, Any] = {}
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if offline and offline.strip().lower() in ("1", "true", "yes", "on"):
        kwargs["local_files_only"] = True
    if os.environ.get("HF_HUB_CACHE"):
        kwargs["cache_dir"] = os.environ["HF_HUB_CACHE"]
    elif os.environ.get("HF_HOME"):
        kwargs["cache_dir"] = str(Path(os.environ["HF_HOME"]) / "hub")
    return kwargs


def _load_error(name_or_path: str, source: str, error: Exception) -> ModelLoadError:
    offline = "local_files_only" in _hub_kwargs()
    return ModelLoadError(
        f"cannot load model {name_or_path!r} (from {source!r}): {error}\n"
        + ("HF_HUB_OFFLINE is set, so only local copies are used. " if offline else "")
        + "If the name is right and this machine has no network, point at a local copy: "
        "save it elsewhere with `model.save_pretrained(DIR)` and `tokenizer.save_pretrained(DIR)` "
        "and pass DIR as the model name, or set HF_HOME (or HF_HUB_CACHE) to a Hugging Face cache "
        "that holds it." + ("" if offline else " Set HF_HUB_OFFLINE=1 to skip network retries.")
    )


RANDOM_INIT_SEED = 123456
"""The reference's seed for the randomly initialised control model (``random_init_model.py``)."""


def random_model_name(name_or_path: str, seed: int = RANDOM_INIT_SEED) -> str:
    """The name a randomly initialised copy of ``name_or_path`` goes by (in results, editors)."""
    return f"{name_or_path}+random{seed}"


def load_model(
    name_or_path: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    random_init: bool = False,
    random_seed: int = RANDOM_INIT_SEED,
    fused_activations: bool = True,
    experiment: str | None = None,
) -> ModelAndTokenizer:
    """Load a causal LM and its tokenizer, frozen and in eval mode.

    Args:
        name_or_path: A Hugging Face hub name, an alias (``gpt2``, ``gpt2-xl``, ``gptj``,
            ``neox``, ``pythia-70m`` .. ``pythia-12b``), a model converted from a package's
            GGUF file (``smollm2-135m``: see :mod:`remedi.gguf_models`), a directory saved with
            ``save_pretrained``, or a toy-world name (``toy``, ``toy-small``, ``toy-<arch>``,
            ``toy-small-<arch>``; built on first use).
        device: Where to put the model (default CPU). Ignored when ``device_map`` is given.
        dtype: Weights dtype. Default: :func:`default_dtype` for ``experiment`` (float32 on a
            CPU; on a GPU the experiment's reference's precision).
        device_map: Passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a model that does
            not fit one GPU over several with accelerate).
        random_init: The paper's control model: the same architecture and tokenizer with
            weights drawn by the model's own initialisation (seeded with ``random_seed``), as
            the reference's ``model.init_weights()``. The trained weights are never read. Its
            name is :func:`random_model_name`.
        fused_activations: Compute GELU's tanh approximation in one kernel (see
            :func:`fuse_activations`): the same function, faster; False keeps the model's own
            modules bit for bit.
        experiment: The experiment the model is loaded for (a key of
            :data:`remedi.settings.PRECISION`), which picks the default dtype; None: half
            precision from a billion parameters on a GPU. Ignored when ``dtype`` is given.

    Raises:
        ModelLoadError: The model cannot be found locally or downloaded.
    """
    source = _resolve_name(name_or_path)
    hub_kwargs = _hub_kwargs()
    try:
        config = transformers.AutoConfig.from_pretrained(source, **hub_kwargs)
    except OSError as error:
        raise _load_error(name_or_path, source, error) from error

    if device_map is not None:
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        target = torch.device(device) if device is not None else torch.device("cpu")
    torch_dtype = (
        parse_dtype(dtype)
        if dtype is not None
        else default_dtype(config, target, name_or_path, experiment)
    )
    logger.info("loading %s from %s as %s on %s", name_or_path, source, torch_dtype, target)
    try:
        if random_init:
            model = _random_model(config, torch_dtype, target, random_seed)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                source,
                config=config,
                dtype=torch_dtype,
                # A single device loads the weights straight there (no copy on the CPU first).
                device_map=device_map if device_map is not None else target,
                **hub_kwargs,
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except OSError as error:
        raise _load_error(name_or_path, source, error) from error
    model.eval()
    # REMEDI trains only the editor: the LM must never hold gradient buffers.
    model.requires_grad_(False)
    if fused_activations:
        fuse_activations(model)

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            logger.warning(
                "tokenizer of %s has neither pad nor eos token; batches need one", source
            )
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    name = random_model_name(name_or_path, random_seed) if random_init else name_or_path
    return ModelAndTokenizer(model=model, tokenizer=tokenizer, name=name)


class TanhGELU(torch.nn.Module):
    """GELU's tanh approximation as one fused kernel (``gelu(x, approximate="tanh")``).

    The same function as transformers' ``NewGELUActivation`` (``gelu_new``: GPT-2, GPT-J,
    CodeGen) and ``FastGELUActivation``, which compute it as half a dozen separate tensor
    operations; this computes it in one, equal up to float rounding (a few units in the last
    place). On a CPU it made the MLPs of a GPT-2-small-shaped model several times cheaper.
    """

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The activation of ``hidden``."""
        return torch.nn.functional.gelu(hidden, approximate="tanh")


def fuse_activations(model: torch.nn.Module) -> int:
    """Replace every ``NewGELUActivation``/``FastGELUActivation`` in ``model`` by
    :class:`TanhGELU` (the same function, one kernel); return how many were replaced.

    :func:`load_model` does this for every model it loads (``fused_activations=False`` keeps
    the originals).
    """
    from transformers.activations import FastGELUActivation, NewGELUActivation

    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, child_name, TanhGELU())
                replaced += 1
    return replaced


def _random_model(
    config: Any, dtype: torch.dtype, device: torch.device, seed: int
) -> transformers.PreTrainedModel:
    """A model of ``config`` with freshly initialised weights, seeded, global RNG untouched."""
    logger.info("initialising a random model (seed %d) instead of loading weights", seed)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model
