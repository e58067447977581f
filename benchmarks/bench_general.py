"""General-ability evaluation speed: cases/s per task and protocol on a GPT-2-small-shaped model.

    python -m benchmarks.bench_general                       # GPT-2 small shape, random, CPU
    python -m benchmarks.bench_general --tiny --items 2      # a tiny model: shows it runs
    python -m benchmarks.bench_general --device cuda --items 64 --batch-size 16

Scores the first ``--items`` items of each of the harms paper's eight task files (from shared
data) under both protocols (``seed``: greedy generation and the seed's parsing; ``loglik``:
option log-likelihoods) with one model loaded once, and prints one JSON line per task and
protocol with its cases/s. Random weights: the speed, not the scores, is what is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch
import transformers

from benchmarks.common import gpt2_tokenizer
from remedi import env, models
from remedi.data import general_tasks
from remedi.evaluation.general import abilities


def random_gpt2(device: str, tiny: bool) -> models.ModelAndTokenizer:
    """GPT-2 small's shape (12 layers, width 768, 1024 positions) or a tiny one, random."""
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    width, num_layers, num_heads = (64, 2, 4) if tiny else (768, 12, 12)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=width,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=1024,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = transformers.GPT2LMHeadModel(config).eval().requires_grad_(False).to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = "gpt2-tiny-random" if tiny else "gpt2-small-random"
    return models.ModelAndTokenizer(model, tokenizer, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead")
    parser.add_argument("--items", type=int, default=16, help="items per task")
    parser.add_argument("--batch-size", type=int, default=abilities.DEFAULT_BATCH_SIZE)
    parser.add_argument("--tasks", default=",".join(general_tasks.TASK_FILES))
    args = parser.parse_args(argv)
    task_dir = env.shared_data_dir() / "edit_harms" / "task-data"
    mt = random_gpt2(args.device, args.tiny)
    scorer = abilities.Scorer(mt, batch_size=args.batch_size)
    for task in args.tasks.split(","):
        items = general_tasks.load_task(task, task_dir)[: args.items]
        for protocol in abilities.PROTOCOLS:
            start = time.perf_counter()
            abilities.evaluate_task(scorer, task, items, protocol)
            if mt.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            row = {
                "model": mt.name,
                "task": task,
                "protocol": protocol,
                "items": len(items),
                "seconds": round(seconds, 3),
                "cases_per_s": round(len(items) / seconds, 2),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
