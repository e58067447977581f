"""Bias in Bios throughput: editor training (samples/s) and error correction (cases/s), peak memory.

    python -m benchmarks.bench_biosbias                                   # toy model, CPU
    python -m benchmarks.bench_biosbias --model gptj-random --device cuda  # GPT-J shape, bf16
    python -m benchmarks.bench_biosbias --model gptj-tiny-random --samples 32 --max-length 24

The training pass precomputes the editor inputs and trains a linear editor for one epoch with
Bias in Bios' loss (no unmediated target: ``lam_u`` off). The evaluation passes run the
error-correction benchmark with that editor attached, once per setting: contextual (bio, then
prompt) and decontextual (prompt alone), each the label scoring pass plus the sampled
generation (top-k 5, ``--max-length`` tokens in all). ``toy``/``toy-small`` use the toy world's
Bias in Bios export (written from ``world.json`` if absent; the world is built if absent); the
random GPT-J models use the export of a generated toy world (no LM training needed). Peak
memory is the GPU's peak allocation on CUDA, the process's peak resident set size on CPU.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    LOADED_MODELS_HELP,
    benchmark_parser,
    closing_figures,
    load_benchmark_model,
    model_figures,
    reset_peak_memory,
    run_benchmark,
    time_training_epoch,
    timed,
)
from remedi import evaluation, models, training
from remedi.data import biosbias as biosbias_data
from remedi.evaluation.editing import biosbias
from remedi.toy import export
from remedi.toy.world import generate_world


def _records(model: str, count: int) -> list[Any]:
    if model.startswith("toy"):
        from remedi.toy.build import ensure_toy_biosbias, ensure_toy_world

        ensure_toy_world(model)
        return biosbias_data.read_biosbias_records(ensure_toy_biosbias(model))
    world = generate_world(seed=0, num_entities=max(8, count // export.BIOSBIAS_PER_ENTITY + 2))
    return export.biosbias_records(world)


def _samples(model: str, count: int) -> tuple[list[dict], dict[str, str]]:
    records = _records(model, count)
    with tempfile.TemporaryDirectory() as tmp:
        samples, bios, _ = biosbias_data.biosbias_samples_and_bios(records, Path(tmp) / "bench")
    return [dict(sample) for sample in samples[:count]], bios


def benchmark(
    model: str, device: str, samples: int, batch_size: int, max_length: int, layer: int | None
) -> dict:
    """Time precomputation, one training epoch and both evaluation passes; return the figures."""
    mt = load_benchmark_model(model, device)
    if layer is None:
        layer = 12 if model == "gptj-random" else 1 if model == "toy" else 0
    rows, bios = _samples(model, samples)
    torch_device = models.determine_device(mt.model)
    reset_peak_memory(torch_device)

    args = training.RunArgs(name="bench", model=mt.name, dataset="biosbias", batch_size=batch_size)
    editor, training_figures = time_training_epoch(
        mt, rows, layer, batch_size, args.training_config()
    )

    cases = biosbias.biosbias_cases(rows)
    resources = evaluation.EvalResources(
        batch_size=batch_size, max_length=max_length, top_k=biosbias.TOP_K_SAMPLING
    )
    method, directions_seconds = timed(
        torch_device, lambda: evaluation.RemediMethod(mt, editor, cases, batch_size=batch_size)
    )
    vectorizer = biosbias.fit_vectorizer(list(bios.values()))
    references = biosbias.label_references(cases, bios, vectorizer)
    figures: dict[str, Any] = {
        **model_figures(mt),
        "layer": layer,
        **training_figures,
        "directions_seconds": round(directions_seconds, 3),
        "generation_max_length": max_length,
    }
    for setting in biosbias.SETTINGS:

        def run(setting: str = setting) -> biosbias.BiosbiasResults:
            return biosbias.error_correction(
                mt, method, cases, resources, setting, vectorizer, references
            )

        _, seconds = timed(torch_device, run)
        figures[f"{setting}_seconds"] = round(seconds, 3)
        figures[f"{setting}_cases_per_second"] = round(len(cases) / seconds, 3)
    return {**figures, **closing_figures(torch_device)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "Bias in Bios training and evaluation throughput",
        LOADED_MODELS_HELP,
    )
    parser.add_argument("--samples", type=int, default=128, help="samples to train and evaluate")
    parser.add_argument("--batch-size", type=int, default=evaluation.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=biosbias.MAX_LENGTH)
    parser.add_argument("--layer", type=int, help="edit layer (default: toy 1, GPT-J 12, else 0)")
    return run_benchmark(parser, benchmark, argv, "samples", "batch_size", "max_length", "layer")


if __name__ == "__main__":
    sys.exit(main())
