"""Evaluation throughput: cases per second of the efficacy and generation passes, peak memory.

    python -m benchmarks.bench_eval                                   # toy model, CPU
    python -m benchmarks.bench_eval --model gptj-random --device cuda  # GPT-J shape, bf16
    python -m benchmarks.bench_eval --model gptj-tiny-random --cases 4 --max-length 24  # smoke

Both passes run with a REMEDI editor attached (a fresh linear editor: speed does not depend on
its weights). The efficacy pass scores target_new and target_true on each case's rewrite prompt
(one forward pass per batch); the generation pass samples from each case's generation prompts
(top-k 5, ``--max-length`` tokens in all, KV cache). ``toy``/``toy-small`` use the toy world's
CounterFact export (built if absent); the random GPT-J models use the export of a generated toy
world (no LM training needed). Peak memory is the GPU's peak allocation on CUDA, the process's
peak resident set size on CPU (which includes loading the model).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks.common import (
    LOADED_MODELS_HELP,
    benchmark_parser,
    closing_figures,
    load_benchmark_model,
    model_figures,
    reset_peak_memory,
    run_benchmark,
    timed,
)
from remedi import data, editors, evaluation, models
from remedi.toy import export
from remedi.toy.world import generate_world


def _cases(model: str, count: int) -> list[evaluation.EvalCase]:
    if model.startswith("toy"):
        from remedi.toy.build import ensure_toy_world

        records = data.load_counterfact_records(ensure_toy_world(model).counterfact_file)
        return evaluation.counterfact_cases(records)[:count]
    world = generate_world(seed=0, num_entities=max(8, count // 5 + 2))
    return evaluation.counterfact_cases(export.counterfact_records(world, seed=0))[:count]


def benchmark(
    model: str, device: str, cases: int, batch_size: int, max_length: int, layer: int | None
) -> dict:
    """Time the efficacy and generation passes; return the figures."""
    mt = load_benchmark_model(model, device)
    if layer is None:
        layer = 1 if model.startswith("gptj") else 0
    eval_cases = _cases(model, cases)
    torch_device = models.determine_device(mt.model)
    reset_peak_memory(torch_device)
    resources = evaluation.EvalResources(batch_size=batch_size, max_length=max_length)

    editor = editors.new_editor("linear", mt, layer)
    method, directions_seconds = timed(
        torch_device,
        lambda: evaluation.RemediMethod(mt, editor, eval_cases, batch_size=batch_size),
    )
    _, efficacy_seconds = timed(
        torch_device, lambda: evaluation.efficacy(mt, method, eval_cases, resources)
    )
    generation, generation_seconds = timed(
        torch_device,
        lambda: evaluation.editing.generation.generation(mt, method, eval_cases, resources),
    )
    prompts = sum(len(case.texts) for case in generation.cases)
    return {
        **model_figures(mt),
        "layer": layer,
        "cases": len(eval_cases),
        "batch_size": batch_size,
        "directions_seconds": round(directions_seconds, 3),
        "efficacy_seconds": round(efficacy_seconds, 3),
        "efficacy_cases_per_second": round(len(eval_cases) / efficacy_seconds, 2),
        "generation_prompts": prompts,
        "generation_max_length": max_length,
        "generation_seconds": round(generation_seconds, 3),
        "generation_cases_per_second": round(len(generation.cases) / generation_seconds, 3),
        "generation_prompts_per_second": round(prompts / generation_seconds, 3),
        **closing_figures(torch_device),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "evaluation throughput (efficacy, generation)",
        LOADED_MODELS_HELP,
    )
    parser.add_argument("--cases", type=int, default=64, help="cases to evaluate")
    parser.add_argument("--batch-size", type=int, default=evaluation.DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-length", type=int, default=evaluation.GENERATION_MAX_LENGTH)
    parser.add_argument("--layer", type=int, help="edit layer (default: 0, GPT-J 1)")
    return run_benchmark(parser, benchmark, argv, "cases", "batch_size", "max_length", "layer")


if __name__ == "__main__":
    sys.exit(main())
