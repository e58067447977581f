"""Weight-editing speed: seconds per edit for ROME and MEMIT, and the key statistics' cost.

    python -m benchmarks.bench_edit                                   # toy model, CPU
    python -m benchmarks.bench_edit --model gpt2-random               # GPT-2 small's shape
    python -m benchmarks.bench_edit --model gpt2-random --device cuda
    python -m benchmarks.bench_edit --model gpt2-tiny-random --edits 2 --batch 4 \\
        --stats-texts 8                                               # smoke test

Phases, each timed on its own:

- ``statistics``: ``E[k k^T]`` at ROME's layer and at every MEMIT layer (not cached here), all in
  one pass, over ``--stats-texts`` texts: the toy world's own text on ``toy``; otherwise the BoolQ
  Wikipedia passages of ``$REMEDI_SHARED_DATA/edit_harms`` (ROME used Wikipedia), else CounterFact
  prompts; ``--stats-join N`` joins every N of them into one text (truncated to the context), to
  measure full-context batches. Reported as corpus tokens per second, and per layer: seconds and
  layer-tokens per second (tokens x layers / seconds). ROME's GPT-2 XL statistics are 100,000
  Wikipedia texts: extrapolate from the rate.
- ``rome``: ``--edits`` single edits one after another (random prefixes sampled once, as the
  reference caches them), seconds per edit.
- ``memit``: one MEMIT edit of ``--batch`` requests at once (default 100), seconds per edit.

``gpt2-random`` is GPT-2 small's shape (12 layers, width 768) with random weights and the real
GPT-2 tokenizer (``$REMEDI_SHARED_DATA/gpt2_tokenizer``), edited with CounterFact requests from
``$REMEDI_SHARED_DATA/counterfact_easyedit/counterfact-edit-1k.json``: it measures speed only.
Peak memory is the GPU's peak allocation per phase on CUDA; on CPU it is the process's peak
resident set size so far (monotonic: a phase's figure includes those before it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

from benchmarks.common import (
    benchmark_parser,
    gpt2_tokenizer,
    model_figures,
    peak_memory_bytes,
    reset_peak_memory,
    run_benchmark,
    synchronize,
)
from remedi import corpora, env, models
from remedi.methods import common, hparams_file, memit, rome, stats
from remedi.toy.build import ToyWorldPaths, toy_world_paths

COUNTERFACT_1K = Path("counterfact_easyedit") / "counterfact-edit-1k.json"
BOOLQ = Path("edit_harms") / "task-data" / "test-ClosedDomainQA.jsonl"


def random_gpt2(device: str, tiny: bool) -> models.ModelAndTokenizer:
    """GPT-2 small's shape (12 x 768) with random weights; ``tiny`` shrinks it (2 x 64)."""
    tokenizer = gpt2_tokenizer()
    width, num_layers, num_heads = (64, 2, 4) if tiny else (768, 12, 12)
    config = transformers.GPT2Config(
        vocab_size=max(len(tokenizer), 50257), n_embd=width, n_layer=num_layers, n_head=num_heads
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.GPT2LMHeadModel(config)
    model.eval().requires_grad_(False)
    models.fuse_activations(model)  # as models.load_model does
    name = "gpt2-tiny-random" if tiny else "gpt2-random"
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name=name)


def counterfact_requests(count: int) -> list[common.EditRequest]:
    """Edit requests from CounterFact's 1k edit subset (EasyEdit's format)."""
    path = env.shared_data_dir() / COUNTERFACT_1K
    if not path.is_file():
        raise SystemExit(f"{path} is missing; set REMEDI_SHARED_DATA to the shared data folder")
    records = json.loads(path.read_text())
    requests = []
    for record in records:
        if record["subject"] in record["prompt"]:
            requests.append(
                common.EditRequest(
                    record["prompt"],
                    record["subject"],
                    record["target_new"],
                    record["ground_truth"],
                )
            )
        if len(requests) == count:
            break
    return requests


def toy_requests(count: int) -> list[common.EditRequest]:
    """Edit requests from the toy world's CounterFact export (rewrite prompts)."""
    records = json.loads(_toy_paths().counterfact_file.read_text())
    requests = []
    for record in records[:count]:
        rewrite = record["requested_rewrite"]
        requests.append(
            common.EditRequest(
                rewrite["prompt"].format(rewrite["subject"]),
                rewrite["subject"],
                rewrite["target_new"]["str"],
                rewrite["target_true"]["str"],
            )
        )
    return requests


def _toy_paths() -> ToyWorldPaths:
    paths = toy_world_paths("toy")
    if not paths.counterfact_file.is_file() or not paths.world_file.is_file():
        raise SystemExit(
            f"no toy world at {paths.data_dir}; build it with `invoke x.toy.build` (or set "
            "REMEDI_MODELS_DIR and REMEDI_DATA_DIR to a built one)"
        )
    return paths


def statistics_texts(model: str, count: int, join: int = 1) -> list[str]:
    """Texts for the key statistics: the toy world's, else Wikipedia passages, else prompts;
    every ``join`` of them joined into one text."""
    if model == "toy":
        texts = corpora.open_corpus(f"toy:{_toy_paths().name}").texts(count * join)
    elif (boolq := env.shared_data_dir() / BOOLQ).is_file():
        lines = boolq.read_text().splitlines()
        texts = [json.loads(line)["passage"] for line in lines[: count * join]]
    else:
        texts = [request.prompt for request in counterfact_requests(count * join)]
    return [" ".join(texts[start : start + join]) for start in range(0, len(texts), join)]


def _start_phase(device: torch.device) -> float:
    reset_peak_memory(device)
    synchronize(device)
    return time.perf_counter()


def _end_phase(device: torch.device, start: float) -> tuple[float, float]:
    synchronize(device)
    return time.perf_counter() - start, round(peak_memory_bytes(device) / 2**20, 1)


def benchmark(
    model: str,
    device: str,
    edits: int,
    batch: int,
    stats_texts: int,
    stats_batch_tokens: int = stats.DEFAULT_BATCH_TOKENS,
    stats_join: int = 1,
) -> dict:
    """Statistics, ROME edits and one MEMIT batch; return the timings and peak memories."""
    if model.startswith("gpt2-"):
        mt = random_gpt2(device, tiny=model == "gpt2-tiny-random")
        requests = counterfact_requests(max(edits, batch))
        hparams_model = "gpt2"
    elif model.startswith("toy"):
        mt = models.load_model(model, device=device)
        requests = toy_requests(max(edits, batch))
        hparams_model = "toy"
    else:  # a real model with its own hyperparameter files (smollm2-135m)
        mt = models.load_model(model, device=device)
        requests = counterfact_requests(max(edits, batch))
        hparams_model = model
    rome_hparams = rome.RomeHparams.from_file(hparams_file("rome", hparams_model))
    memit_hparams = memit.MemitHparams.from_file(hparams_file("memit", hparams_model))
    if model == "gpt2-tiny-random":
        rome_hparams.layer = 0
        memit_hparams.layers = [0]
    torch_device = models.determine_device(mt.model)
    result: dict = {
        **model_figures(mt),
        "torch_threads": torch.get_num_threads(),
    }

    texts = statistics_texts(model, stats_texts, stats_join)
    layers = sorted({rome_hparams.layer, *memit_hparams.layers})
    start = _start_phase(torch_device)
    computed = stats.second_moments(
        mt,
        layers,
        corpora.from_texts("bench", texts),
        len(texts),
        max_batch_tokens=stats_batch_tokens,
    )
    seconds, peak = _end_phase(torch_device, start)
    moments = {layer: computed[layer].moment for layer in layers}
    tokens = int(computed[layers[0]].metadata["tokens"])
    result.update(
        stats_layers=len(layers),
        stats_texts=len(texts),
        stats_batch_tokens=stats_batch_tokens,
        stats_tokens_per_layer=tokens,
        stats_seconds=round(seconds, 3),
        stats_seconds_per_layer=round(seconds / len(layers), 3),
        stats_corpus_tokens_per_second=round(tokens / seconds, 1),
        stats_tokens_per_second=round(tokens * len(layers) / seconds, 1),
        stats_peak_memory_mib=peak,
    )

    start = _start_phase(torch_device)
    rome_templates = common.prefix_templates(mt, rome_hparams)
    memit_templates = common.prefix_templates(mt, memit_hparams)
    result["templates_seconds"] = round(_end_phase(torch_device, start)[0], 3)

    start = _start_phase(torch_device)
    rome_moment = moments[rome_hparams.layer] if rome_hparams.mom2_adjustment else None
    for request in requests[:edits]:
        rome.edit(mt, request, rome_hparams, rome_moment, rome_templates)
    seconds, peak = _end_phase(torch_device, start)
    result.update(
        rome_layer=rome_hparams.layer,
        rome_edits=edits,
        rome_seconds_per_edit=round(seconds / edits, 3),
        rome_peak_memory_mib=peak,
    )

    start = _start_phase(torch_device)
    memit.edit(mt, requests[:batch], memit_hparams, moments, memit_templates)
    seconds, peak = _end_phase(torch_device, start)
    result.update(
        memit_layers=",".join(map(str, memit_hparams.layers)),
        memit_batch=batch,
        memit_seconds_per_edit=round(seconds / batch, 3),
        memit_peak_memory_mib=peak,
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "ROME and MEMIT seconds per edit",
        "toy, gpt2-random (GPT-2 small's shape, random weights), gpt2-tiny-random, or a real "
        "model with hyperparameter files (smollm2-135m: EasyEdit's CounterFact requests)",
    )
    parser.add_argument("--edits", type=int, default=10, help="ROME edits, one at a time")
    parser.add_argument("--batch", type=int, default=100, help="MEMIT requests in one batch")
    parser.add_argument("--stats-texts", type=int, default=1000, help="texts of the statistics")
    parser.add_argument(
        "--stats-batch-tokens",
        type=int,
        default=stats.DEFAULT_BATCH_TOKENS,
        help="padded tokens per forward of the statistics",
    )
    parser.add_argument(
        "--stats-join", type=int, default=1, help="join every N statistics texts into one"
    )
    return run_benchmark(
        parser, benchmark, argv, "edits", "batch", "stats_texts", "stats_batch_tokens", "stats_join"
    )


if __name__ == "__main__":
    sys.exit(main())
