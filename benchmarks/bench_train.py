"""Training throughput: samples per second and peak memory for one epoch of editor training.

    python -m benchmarks.bench_train                                  # toy model, CPU
    python -m benchmarks.bench_train --model gptj-random --device cuda  # GPT-J shape, bf16
    python -m benchmarks.bench_train --model gptj-tiny-random --samples 32  # smoke test

``toy``/``toy-small`` train on the toy world's CounterFact export (built if absent).
``gptj-random`` is GPT-J 6B's shape (28 layers, width 4096) with random weights in bfloat16:
no download, so it measures speed only; it uses the real GPT-2/GPT-J tokenizer from
``$REMEDI_SHARED_DATA/gpt2_tokenizer`` when present (else a locally trained one) and synthetic
CounterFact-style samples. Peak memory is the GPU's peak allocation on CUDA, and the process's
peak resident set size on CPU (which includes loading the model).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import (
    model_figures,
    peak_memory_bytes,
    random_gptj,
    report,
    reset_peak_memory,
    synthetic_samples,
    timed,
)
from remedi import data, editors, models, precompute, training


def benchmark(model: str, device: str, samples: int, batch_size: int, layer: int | None) -> dict:
    """Precompute and train one epoch; return the timings and peak memory."""
    if model.startswith("gptj-"):
        mt = random_gptj(device, tiny=model == "gptj-tiny-random")
        rows: Sequence[dict] = synthetic_samples(samples)
    else:
        from remedi.toy.build import ensure_toy_world

        mt = models.load_model(model, device=device)
        dataset = data.load_dataset("counterfact", file=ensure_toy_world(model).counterfact_file)
        rows = [dataset[index] for index in range(min(samples, len(dataset)))]
    if layer is None:
        layer = 1 if model.startswith("gptj") else 0
    torch_device = models.determine_device(mt.model)
    reset_peak_memory(torch_device)

    inputs, precompute_seconds = timed(
        torch_device, lambda: precompute.editor_inputs(mt, rows, [layer])
    )
    editor = editors.new_editor("linear", mt, layer)
    config = training.TrainingConfig(max_epochs=1, batch_size=batch_size)
    optimizer = torch.optim.AdamW(editor.parameters(), lr=config.lr)

    def epoch() -> None:
        with training.frozen(mt.model):
            for batch in inputs.batches(batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss, _ = training.editing_loss(mt, editor, batch, config.weights)
                loss.backward()
                optimizer.step()

    _, epoch_seconds = timed(torch_device, epoch)
    return {
        **model_figures(mt),
        "layer": layer,
        "samples": len(inputs),
        "batch_size": batch_size,
        "precompute_seconds": round(precompute_seconds, 3),
        "precompute_samples_per_second": round(len(inputs) / precompute_seconds, 2),
        "epoch_seconds": round(epoch_seconds, 3),
        "train_samples_per_second": round(len(inputs) / epoch_seconds, 2),
        "peak_memory_mib": round(peak_memory_bytes(torch_device) / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="editor training throughput (one epoch)")
    parser.add_argument(
        "--model",
        default="toy",
        help="toy, toy-small, gptj-random (GPT-J shape, random bf16) or gptj-tiny-random",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=512, help="samples in the epoch")
    parser.add_argument("--batch-size", type=int, default=training.DEFAULT_BATCH_SIZE)
    parser.add_argument("--layer", type=int, help="edit layer (default: 0 toy, 1 GPT-J)")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    result = benchmark(args.model, args.device, args.samples, args.batch_size, args.layer)
    report(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
