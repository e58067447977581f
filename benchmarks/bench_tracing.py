"""Causal tracing speed: seconds per traced case (every kind and window), peak memory.

    python -m benchmarks.bench_tracing                                   # toy model, CPU
    python -m benchmarks.bench_tracing --model gptj-random --device cuda  # GPT-J shape, bf16
    python -m benchmarks.bench_tracing --model gptj-tiny-random --cases 2  # smoke

Each case is traced for the residual stream, MLP and attention outputs with ``--windows``
(default 10 5 3 1) and 10 noise samples: (tokens x layers) restorations per kind and window,
batched ``--max-batch-rows`` rows per forward pass, each after the corrupted run's cached
tokens before the restored one (``--no-prefix-reuse``: over the whole prompt). Toy models trace the toy world's CounterFact
rewrite prompts (built if absent); the random GPT-J models trace synthetic prompts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch

from benchmarks.common import (
    benchmark_parser,
    easyedit_counterfact_file,
    peak_memory_bytes,
    random_gptj,
    report,
    synchronize,
    synthetic_samples,
)
from remedi import data, evaluation, models, tracing


def _prompts(model: str, count: int) -> list[tuple[int, str, str, str]]:
    if model.startswith("toy"):
        from remedi.toy.build import ensure_toy_world

        records = data.load_counterfact_records(ensure_toy_world(model).counterfact_file)
        cases = evaluation.counterfact_cases(records, prompt_source="rewrite")[:count]
        return [(c.case_id, c.rewrite_prompt, c.entity, c.target_true) for c in cases]
    if not model.startswith("gptj"):
        records = data.load_counterfact_easyedit_records(easyedit_counterfact_file())
        cases = evaluation.counterfact_cases(records, prompt_source="rewrite")[:count]
        return [(c.case_id, c.rewrite_prompt, c.entity, c.target_true) for c in cases]
    samples = synthetic_samples(count)
    return [
        (index, s["prompt"], s["entity"], s["target_unmediated"]) for index, s in enumerate(samples)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "causal tracing speed",
        "toy, toy-small, gptj-random, gptj-tiny-random, or a real model (smollm2-135m: "
        "EasyEdit's CounterFact rewrite prompts)",
    )
    parser.add_argument("--cases", type=int, default=8, help="cases to trace")
    parser.add_argument("--windows", type=int, nargs="+", default=list(tracing.DEFAULT_WINDOWS))
    parser.add_argument("--kinds", nargs="+", choices=tracing.KINDS, default=list(tracing.KINDS))
    parser.add_argument("--max-batch-rows", type=int, default=tracing.DEFAULT_MAX_BATCH_ROWS)
    parser.add_argument(
        "--no-prefix-reuse",
        dest="reuse_prefix",
        action="store_false",
        help="restored runs cover the whole prompt (the definition) instead of reusing the "
        "corrupted run's cached prefix",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.model.startswith("gptj"):
        mt = random_gptj(args.device, tiny=args.model == "gptj-tiny-random")
    else:
        mt = models.load_model(args.model, device=device)
    prompts = _prompts(args.model, args.cases)
    settings = tracing.TraceSettings(
        noise_scale=tracing.noise_scale_for(mt, [subject for _, _, subject, _ in prompts]),
        windows=args.windows,
        kinds=args.kinds,
    )
    tracing.trace_prompt(mt, *prompts[0][1:], settings, require_correct=False)  # warm up
    synchronize(device)
    start = time.perf_counter()
    tokens = 0
    for case_id, prompt, subject, target in prompts:
        result = tracing.trace_prompt(
            mt,
            prompt,
            subject,
            target,
            settings,
            case_id,
            require_correct=False,
            max_batch_rows=args.max_batch_rows,
            reuse_prefix=args.reuse_prefix,
        )
        tokens += len(result.tokens)
    synchronize(device)
    seconds = time.perf_counter() - start
    figures = {
        "model": mt.name,
        "device": str(device),
        "cases": len(prompts),
        "layers": mt.num_layers,
        "mean_tokens": tokens / len(prompts),
        "kinds x windows": len(settings.kinds) * len(settings.windows),
        "reuse_prefix": args.reuse_prefix,
        "seconds_per_case": seconds / len(prompts),
        "peak_memory_mib": peak_memory_bytes(device) / 2**20,
    }
    report(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
