"""Training throughput: samples per second and peak memory for one epoch of editor training.

    python -m benchmarks.bench_train                                  # toy model, CPU
    python -m benchmarks.bench_train --model gptj-random --device cuda  # GPT-J shape, bf16
    python -m benchmarks.bench_train --model gptj-tiny-random --samples 32  # smoke test

``toy``/``toy-small`` train on the toy world's CounterFact export (built if absent); another
model by name (``smollm2-135m``) on EasyEdit's CounterFact train file in the shared data.
``gptj-random`` is GPT-J 6B's shape (28 layers, width 4096) with random weights in bfloat16:
no download, so it measures speed only; it uses the real GPT-2/GPT-J tokenizer from
``$REMEDI_SHARED_DATA/gpt2_tokenizer`` when present (else a locally trained one) and synthetic
CounterFact-style samples. Peak memory is the GPU's peak allocation on CUDA, and the process's
peak resident set size on CPU (which includes loading the model).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks.common import (
    benchmark_parser,
    closing_figures,
    easyedit_counterfact_file,
    model_figures,
    random_gptj,
    reset_peak_memory,
    run_benchmark,
    synthetic_samples,
    time_training_epoch,
)
from remedi import data, models, training


def benchmark(model: str, device: str, samples: int, batch_size: int, layer: int | None) -> dict:
    """Precompute and train one epoch; return the timings and peak memory."""
    if model.startswith("gptj-"):
        mt = random_gptj(device, tiny=model == "gptj-tiny-random")
        rows: Sequence[dict] = synthetic_samples(samples)
    else:
        mt = models.load_model(model, device=device)
        if model.startswith("toy"):
            from remedi.toy.build import ensure_toy_world

            file = ensure_toy_world(model).counterfact_file
            dataset = data.load_dataset("counterfact", file=file)
        else:
            dataset = data.load_dataset("counterfact_easyedit", file=easyedit_counterfact_file())
        rows = [dataset[index] for index in range(min(samples, len(dataset)))]
    if layer is None:
        layer = 1 if model.startswith("gptj") else 0
    torch_device = models.determine_device(mt.model)
    reset_peak_memory(torch_device)

    config = training.TrainingConfig(max_epochs=1, batch_size=batch_size)
    _, training_figures = time_training_epoch(mt, rows, layer, batch_size, config)
    return {
        **model_figures(mt),
        "layer": layer,
        **training_figures,
        **closing_figures(torch_device),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "editor training throughput (one epoch)",
        "toy, toy-small, gptj-random (GPT-J shape, random bf16), gptj-tiny-random, or a real "
        "model (smollm2-135m)",
    )
    parser.add_argument("--samples", type=int, default=512, help="samples in the epoch")
    parser.add_argument("--batch-size", type=int, default=training.DEFAULT_BATCH_SIZE)
    parser.add_argument("--layer", type=int, help="edit layer (default: 0 toy, 1 GPT-J)")
    return run_benchmark(parser, benchmark, argv, "samples", "batch_size", "layer")


if __name__ == "__main__":
    sys.exit(main())
