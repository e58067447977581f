"""What the speed benchmarks share: synthetic samples, a random GPT-J, peak memory."""

from __future__ import annotations

import resource
import sys
import tempfile

import torch
import transformers

from remedi import data, env, models

SYNTHETIC_TEMPLATES = [
    ("{} lives in the city of", ["Oslo", "Lisbon", "Paris", "Tokyo", "Lima"]),
    ("{} speaks the language", ["Spanish", "French", "Norwegian", "German", "Thai"]),
    ("{} works as a", ["doctor", "painter", "singer", "lawyer", "farmer"]),
]
SYLLABLES = ["ka", "lo", "van", "tri", "mi", "ra", "tal", "ov", "xa", "vi", "bor", "na", "del"]


def synthetic_samples(count: int) -> list[dict]:
    """CounterFact-style samples about made-up people (for models without a dataset)."""
    samples = []
    for index in range(count):
        first = "".join(SYLLABLES[(index * k + k) % len(SYLLABLES)] for k in (1, 2)).title()
        last = "".join(SYLLABLES[(index * k + 3) % len(SYLLABLES)] for k in (3, 5, 7)).title()
        entity = f"{first} {last}{index}"
        template, values = SYNTHETIC_TEMPLATES[index % len(SYNTHETIC_TEMPLATES)]
        new, true = values[index % len(values)], values[(index + 1) % len(values)]
        samples.append(
            dict(data.counterfact_sample(index, entity, template.format(entity), new, true))
        )
    return samples


def gpt2_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The real GPT-2/GPT-J tokenizer from shared data, else one trained locally."""
    folder = env.shared_data_dir() / "gpt2_tokenizer"
    tokenizer: transformers.PreTrainedTokenizerBase
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        slow = transformers.GPT2Tokenizer(
            vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")
        )
        with tempfile.TemporaryDirectory() as tmp:  # AutoTokenizer gives the fast tokenizer
            slow.save_pretrained(tmp)
            tokenizer = transformers.AutoTokenizer.from_pretrained(tmp)
    else:
        from remedi.toy.tokenizer import train_bpe_tokenizer

        texts = [sample["context"] for sample in synthetic_samples(500)]
        tokenizer = train_bpe_tokenizer(texts, vocab_size=1024, min_frequency=1)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_gptj(device: str, tiny: bool) -> models.ModelAndTokenizer:
    """GPT-J's shape with random weights (bf16 on CUDA, fp32 on CPU); ``tiny`` shrinks it."""
    tokenizer = gpt2_tokenizer()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    width, num_layers, num_heads, rotary_dim, positions = (
        (64, 2, 4, 8, 256) if tiny else (4096, 28, 16, 64, 2048)
    )
    config = transformers.GPTJConfig(
        vocab_size=max(len(tokenizer), 50400),
        n_embd=width,
        n_layer=num_layers,
        n_head=num_heads,
        rotary_dim=rotary_dim,
        n_positions=positions,
    )
    torch.manual_seed(0)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype: no fp32 copy of 6B weights
    try:
        with torch.device(device):
            model = transformers.GPTJForCausalLM(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    model.eval().requires_grad_(False)
    models.fuse_activations(model)  # as models.load_model does
    name = "gptj-tiny-random" if tiny else "gptj-random"
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name=name)


def peak_memory_bytes(device: torch.device) -> int:
    """The GPU's peak allocation on CUDA; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak_kib * (1 if sys.platform == "darwin" else 1024))
