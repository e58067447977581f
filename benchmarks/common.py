"""What the speed benchmarks share: synthetic samples, a random GPT-J, timing, peak memory, and
how the figures are printed and saved."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers

from remedi import data, editors, env, models, precompute, training

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


def easyedit_counterfact_file() -> Path:
    """EasyEdit's CounterFact train file in the shared data: what a real model (SmolLM2)
    trains and traces on offline.

    Raises:
        SystemExit: The file is not there (the message names the folder's variable).
    """
    path = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-train.json"
    if not path.is_file():
        raise SystemExit(
            f"a real model's benchmark reads EasyEdit's CounterFact at {path}, which is not "
            "there: set REMEDI_SHARED_DATA to the folder that holds counterfact_easyedit/"
        )
    return path


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


def reset_peak_memory(device: torch.device) -> None:
    """Start the GPU's peak allocation afresh (on CPU the peak resident set cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """The GPU's peak allocation on CUDA; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak_kib * (1 if sys.platform == "darwin" else 1024))


LOADED_MODELS_HELP = (
    "toy, toy-small, any model name, gptj-random (GPT-J shape, random bf16) or gptj-tiny-random"
)
"""``--model`` of the benchmarks that take what :func:`load_benchmark_model` loads."""


def load_benchmark_model(model: str, device: str) -> models.ModelAndTokenizer:
    """``gptj-random``/``gptj-tiny-random`` (:func:`random_gptj`), else ``model`` loaded by name."""
    if model.startswith("gptj-"):
        return random_gptj(device, tiny=model == "gptj-tiny-random")
    return models.load_model(model, device=device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


T = TypeVar("T")


def timed(device: torch.device, run: Callable[[], T]) -> tuple[T, float]:
    """``run()``'s value and its wall-clock seconds, the device synchronised at both ends."""
    synchronize(device)
    start = time.perf_counter()
    value = run()
    synchronize(device)
    return value, time.perf_counter() - start


def model_figures(mt: models.ModelAndTokenizer) -> dict[str, Any]:
    """The figures that say what was timed: the model, its device and dtype."""
    return {
        "model": mt.name,
        "device": str(models.determine_device(mt.model)),
        "dtype": str(models.determine_dtype(mt.model)).removeprefix("torch."),
    }


def closing_figures(device: torch.device) -> dict[str, Any]:
    """The figures a benchmark ends with: the peak memory (MiB) and torch's thread count."""
    return {
        "peak_memory_mib": round(peak_memory_bytes(device) / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


def report(figures: Mapping[str, Any], output: Path | None) -> None:
    """Print the figures one per line, aligned, and write them as JSON to ``output`` if given."""
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if output is not None:
        output.write_text(json.dumps(figures, indent=2) + "\n")


def benchmark_parser(description: str, model_help: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags every benchmark takes: ``--model``, ``--device`` and
    ``--output``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="toy", help=model_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    return parser


def run_benchmark(
    parser: argparse.ArgumentParser,
    benchmark: Callable[..., Mapping[str, Any]],
    argv: Sequence[str] | None,
    *arguments: str,
) -> int:
    """Parse ``argv`` with a :func:`benchmark_parser`, call ``benchmark(model, device, *the
    parsed arguments named)``, and :func:`report` its figures; the exit code."""
    args = parser.parse_args(argv)
    result = benchmark(args.model, args.device, *(getattr(args, name) for name in arguments))
    report(result, args.output)
    return 0


def time_training_epoch(
    mt: models.ModelAndTokenizer,
    rows: Sequence[dict],
    layer: int,
    batch_size: int,
    config: training.TrainingConfig,
) -> tuple[editors.Editor, dict[str, Any]]:
    """Precompute the editor inputs of ``rows`` and train a new linear editor at ``layer`` for
    one epoch; return the editor and the figures (samples, seconds, samples per second)."""
    device = models.determine_device(mt.model)
    inputs, precompute_seconds = timed(device, lambda: precompute.editor_inputs(mt, rows, [layer]))
    editor = editors.new_editor("linear", mt, layer)
    optimizer = torch.optim.AdamW(editor.parameters(), lr=config.lr)

    def epoch() -> None:
        with training.frozen(mt.model):
            for batch in inputs.batches(batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = training.editing_loss(mt, editor, batch, config.weights)
                loss.backward()
                optimizer.step()

    _, epoch_seconds = timed(device, epoch)
    return editor, {
        "samples": len(inputs),
        "batch_size": batch_size,
        "precompute_seconds": round(precompute_seconds, 3),
        "precompute_samples_per_second": round(len(inputs) / precompute_seconds, 2),
        "epoch_seconds": round(epoch_seconds, 3),
        "train_samples_per_second": round(len(inputs) / epoch_seconds, 2),
    }
