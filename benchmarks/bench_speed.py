"""Issue 12's speed table: training, precompute, efficacy, generation and peak memory.

    python -m benchmarks.bench_speed                       # every row, medians of 3, 2 threads
    python -m benchmarks.bench_speed --rows train precompute-4x256 --repeats 1
    python -m benchmarks.bench_speed --json speed.json
    python -m benchmarks.bench_speed --shape gptj --device cuda --repeats 1
    python -m benchmarks.bench_speed --shape 4x256 12x768 --profile 64

The setup is the issue's, exactly: randomly initialised GPT-2 models (seeded) of two shapes,
4 layers x 256 (4 heads) and 12 layers x 768 (12 heads, GPT-2 small's shape), with the real
50,257-token GPT-2 vocabulary and tokenizer from ``$REMEDI_SHARED_DATA/gpt2_tokenizer``; the
first N samples of ``$REMEDI_SHARED_DATA/counterfact_easyedit/counterfact-edit-1k.json``
(``remedi.data.load_dataset("counterfact_easyedit", ...)``, default prompts); a linear editor
at layer 1; the paper's loss (lam_m 1, lam_u 1, the default lam_kl; its value does not change
the time), lr 1e-3, batch 16; ``--threads`` torch threads (2). Rows:

- ``train-*``: one epoch with updates (``training.train_editor`` with ``max_epochs=1`` and no
  validation samples), samples per second;
- ``precompute-*``: ``precompute.editor_inputs`` for the training samples, seconds;
- ``efficacy-4x256``: building a ``RemediMethod`` (which computes the directions from the
  contexts) and running ``evaluation.efficacy``, cases per second;
- ``generation-4x256``: ``evaluation.editing.generation.generation`` with 2 prompts per case (the
  record's rewrite prompt and the sample's prompt, its cleaned ``rephrase_prompt``), top-k 5,
  100 tokens, cases per second (the method is built before the clock starts);
- ``rss-*``: peak memory of the process that trained (it loaded the model and precomputed
  first): the resident set size on CPU, the peak allocation on CUDA (since the model loaded).

Each model shape runs in its own fresh process, so the memory rows do not mix the two.

Beyond the issue's table, ``--shape gptj --device cuda`` runs the training rows on GPT-J 6B's
shape (28 layers x 4096, random weights in bfloat16, the same 160 cases): samples per second
and the peak GPU allocation, weights included (GPT-J editor training must fit in 24 GB);
``--shape gptj-tiny`` is its CPU smoke test. ``--profile N`` prints where one training epoch on
the first N cases of each shape spends its time (torch.profiler, top operators).
The script uses only APIs that exist both at commit d6b4fda and after the speed work, so the
same file measures a checkout from before and after, side by side.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from benchmarks.common import random_gptj, synchronize, timed
from remedi import data, editors, env, evaluation, models, precompute, training

LAYER = 1
BATCH_SIZE = 16
LEARNING_RATE = 1e-3
DATA_FILE = Path("counterfact_easyedit") / "counterfact-edit-1k.json"
TOKENIZER_DIR = "gpt2_tokenizer"

SHAPES: dict[str, tuple[int, int, int]] = {
    "4x256": (4, 256, 4),  # layers, width, heads
    "12x768": (12, 768, 12),
}
GPTJ_SHAPES = ("gptj", "gptj-tiny")  # GPT-J 6B's shape (bf16 on CUDA), and a tiny one for CPU


@dataclass(frozen=True)
class Row:
    """One row of the issue's table, with the issue's reference, main-today and goal figures."""

    name: str
    shape: str
    cases: int
    what: str
    unit: str
    reference: float | None
    main_d6b4fda: float | None
    goal: str


ROWS = [
    Row("train-4x256", "4x256", 480, "training, one epoch", "samples/s", 33.7, 55.6, ">= 101"),
    Row("train-12x768", "12x768", 160, "training, one epoch", "samples/s", 6.7, 13.0, ">= 20"),
    Row("precompute-4x256", "4x256", 480, "precompute", "s", 1.24, 5.61, "<= 0.4"),
    Row("precompute-12x768", "12x768", 160, "precompute", "s", 2.63, 8.39, "<= 0.9"),
    Row(
        "efficacy-4x256", "4x256", 96, "efficacy (with directions)", "cases/s", 64.5, 40.9, ">= 194"
    ),
    Row("generation-4x256", "4x256", 96, "generation 2x100 tok", "cases/s", 2.46, 2.18, ">= 3.7"),
    Row("rss-4x256", "4x256", 480, "peak memory, training", "GB", 1.07, 0.83, "<= today"),
    Row("rss-12x768", "12x768", 160, "peak memory, training", "GB", 2.65, 1.50, "<= today"),
    Row("train-gptj", "gptj", 160, "training, one epoch", "samples/s", None, None, "-"),
    Row("precompute-gptj", "gptj", 160, "precompute", "s", None, None, "-"),
    Row("rss-gptj", "gptj", 160, "peak memory, training", "GB", None, None, "<= 24 (CUDA)"),
    Row("train-gptj-tiny", "gptj-tiny", 32, "training, one epoch", "samples/s", None, None, "-"),
    Row("rss-gptj-tiny", "gptj-tiny", 32, "peak memory, training", "GB", None, None, "-"),
]
ROWS_BY_NAME = {row.name: row for row in ROWS}


# ---------------------------------------------------------------------------------------
# The setup.


def gpt2_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The real GPT-2 tokenizer from shared data (fast, with a pad token)."""
    folder = env.shared_data_dir() / TOKENIZER_DIR
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise SystemExit(
            f"no GPT-2 tokenizer at {folder}: set REMEDI_SHARED_DATA to the shared data folder"
        )
    # transformers 5 needs vocab=/merges= (vocab_file= silently gives an empty tokenizer).
    slow = transformers.GPT2Tokenizer(vocab=str(vocab), merges=str(merges))
    with tempfile.TemporaryDirectory() as directory:
        slow.save_pretrained(directory)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def random_gpt2(shape: str, device: str) -> models.ModelAndTokenizer:
    """A seeded random GPT-2 of ``shape`` with the real vocabulary, frozen, in eval mode."""
    tokenizer = gpt2_tokenizer()
    num_layers, width, heads = SHAPES[shape]
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=num_layers,
        n_embd=width,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.GPT2LMHeadModel(config)
    model.eval().requires_grad_(False)
    models.fuse_activations(model)  # as models.load_model does
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name=f"gpt2-random-{shape}")


def build_model(shape: str, device: str) -> models.ModelAndTokenizer:
    """The random model of ``shape``: a GPT-2 of the issue's table, or GPT-J's shape."""
    if shape in GPTJ_SHAPES:
        return random_gptj(device, tiny=shape == "gptj-tiny")
    return random_gpt2(shape, device)


def load_samples(count: int) -> list[dict]:
    """The first ``count`` samples of the 1k CounterFact edit file (EasyEdit format)."""
    dataset = data.load_dataset("counterfact_easyedit", env.shared_data_dir() / DATA_FILE)
    return [dataset[index] for index in range(count)]


def eval_cases(samples: Sequence[dict]) -> list[evaluation.EvalCase]:
    """Evaluation cases for samples, with the rewrite and the sample's prompt to generate from."""
    raw = json.loads((env.shared_data_dir() / DATA_FILE).read_text())
    rewrite_prompts = {f"counterfact/{record['case_id']}": record["prompt"] for record in raw}
    cases = []
    for sample in samples:
        rewrite = rewrite_prompts[sample["id"]]
        cases.append(
            evaluation.EvalCase(
                case_id=int(sample["id"].split("/")[1]),
                entity=sample["entity"],
                relation_id="",
                prompt=sample["prompt"],
                context=sample["context"],
                attribute=sample["attribute"],
                target_new=sample["target_mediated"],
                target_new_id="",
                target_true=sample["target_unmediated"],
                target_true_id="",
                rewrite_prompt=rewrite,
                generation_prompts=[rewrite, sample["prompt"]],
            )
        )
    return cases


def new_editor(mt: models.ModelAndTokenizer) -> editors.Editor:
    torch.manual_seed(0)
    return editors.new_editor("linear", mt, LAYER)


# ---------------------------------------------------------------------------------------
# Timing one model shape (in its own process).


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak_kib * (1 if sys.platform == "darwin" else 1024) / 1e9


def _training_runs(
    mt: models.ModelAndTokenizer, shape: str, wanted: set[str], repeats: int
) -> dict[str, list[float]]:
    """Precompute and one training epoch, ``repeats`` times each where their rows are wanted;
    then the peak memory so far."""
    device = models.determine_device(mt.model)
    runs: dict[str, list[float]] = {"precompute": [], "train": [], "rss": []}
    samples = load_samples(ROWS_BY_NAME[f"train-{shape}"].cases)
    timed_rows = wanted & {f"precompute-{shape}", f"train-{shape}"}
    inputs = None
    for _ in range(repeats if timed_rows else 1):
        inputs, seconds = timed(device, lambda: precompute.editor_inputs(mt, samples, [LAYER]))
        runs["precompute"].append(seconds)
    assert inputs is not None
    config = training.TrainingConfig(
        max_epochs=1,
        batch_size=BATCH_SIZE,
        lr=LEARNING_RATE,
        weights=training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=training.DEFAULT_LAM_KL),
    )
    no_validation = inputs.select([])
    for _ in range(repeats if f"train-{shape}" in wanted else 1):
        editor = new_editor(mt)
        _, seconds = timed(
            device,
            lambda: training.train_editor(mt, editor, inputs, no_validation, config),  # noqa: B023
        )
        runs["train"].append(len(inputs) / seconds)
    runs["rss"].append(_peak_memory_gb(device))
    return {f"{kind}-{shape}": figures for kind, figures in runs.items()}


def _evaluation_runs(
    mt: models.ModelAndTokenizer, shape: str, wanted: set[str], repeats: int
) -> dict[str, list[float]]:
    """The efficacy pass (directions included) and the generation pass, ``repeats`` times."""
    device = models.determine_device(mt.model)
    runs: dict[str, list[float]] = {}
    editor = new_editor(mt)
    resources = evaluation.EvalResources(batch_size=BATCH_SIZE, max_length=100, top_k=5)
    if f"efficacy-{shape}" in wanted:
        cases = eval_cases(load_samples(ROWS_BY_NAME[f"efficacy-{shape}"].cases))

        def efficacy_pass() -> None:
            method = evaluation.RemediMethod(mt, editor, cases, batch_size=resources.batch_size)
            evaluation.efficacy(mt, method, cases, resources)

        runs[f"efficacy-{shape}"] = [
            len(cases) / timed(device, efficacy_pass)[1] for _ in range(repeats)
        ]
    if f"generation-{shape}" in wanted:
        cases = eval_cases(load_samples(ROWS_BY_NAME[f"generation-{shape}"].cases))
        method = evaluation.RemediMethod(mt, editor, cases, batch_size=resources.batch_size)

        def generation_pass() -> None:
            evaluation.editing.generation.generation(mt, method, cases, resources)

        runs[f"generation-{shape}"] = [
            len(cases) / timed(device, generation_pass)[1] for _ in range(repeats)
        ]
    return runs


def measure_shape(
    shape: str, names: Sequence[str], repeats: int, threads: int, device: str, quiet: bool
) -> dict[str, list[float]]:
    """Run the rows ``names`` of one model shape ``repeats`` times; their figures per run."""
    if quiet:  # progress bars and warnings (errors still reach the parent as exceptions)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stderr.fileno())
    torch.set_num_threads(threads)
    mt = build_model(shape, device)
    if mt.model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(mt.model.device)
    wanted = set(names)
    runs: dict[str, list[float]] = {}
    if any(name.split("-")[0] in ("train", "precompute", "rss") for name in names):
        runs.update(_training_runs(mt, shape, wanted, repeats))
    runs.update(_evaluation_runs(mt, shape, wanted, repeats))
    return {name: runs[name] for name in names}


def measure(
    names: Sequence[str], repeats: int, threads: int, device: str, quiet: bool = True
) -> dict[str, Any]:
    """Every requested row, each model shape in a fresh process; medians and single runs."""
    runs: dict[str, list[float]] = {}
    spawn = multiprocessing.get_context("spawn")
    for shape in dict.fromkeys(ROWS_BY_NAME[name].shape for name in names):
        shape_names = [name for name in names if ROWS_BY_NAME[name].shape == shape]
        if not shape_names:
            continue
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            future = pool.submit(measure_shape, shape, shape_names, repeats, threads, device, quiet)
            runs.update(future.result())
    return {
        name: {
            **asdict(ROWS_BY_NAME[name]),
            "median": statistics.median(runs[name]),
            "runs": runs[name],
        }
        for name in names
    }


def profile_training(shape: str, count: int, threads: int, device: str, top: int = 15) -> str:
    """The top operators (self time) of one training epoch on the first ``count`` cases,
    after a warm-up epoch."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    mt = build_model(shape, device)
    inputs = precompute.editor_inputs(mt, load_samples(count), [LAYER])
    config = training.TrainingConfig(max_epochs=1, batch_size=BATCH_SIZE, lr=LEARNING_RATE)

    def epoch() -> None:
        training.train_editor(mt, new_editor(mt), inputs, inputs.select([]), config)

    epoch()
    activities = [ProfilerActivity.CPU]
    if mt.model.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        epoch()
        synchronize(mt.model.device)
    sort_by = "self_cuda_time_total" if mt.model.device.type == "cuda" else "self_cpu_time_total"
    return str(profiler.key_averages().table(sort_by=sort_by, row_limit=top))


# ---------------------------------------------------------------------------------------
# The door.


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def format_table(results: dict[str, Any], repeats: int) -> str:
    """The results as a markdown table beside the issue's reference and goal figures."""
    lines = [
        f"| row | pass | model | cases | unit | this checkout (median of {repeats}) | runs | "
        "reference (issue) | main d6b4fda (issue) | goal |",
        "|---|---|---|---:|---|---:|---|---:|---:|---|",
    ]
    for name, result in results.items():
        runs = " ".join(_number(value) for value in result["runs"])
        lines.append(
            f"| {name} | {result['what']} | {result['shape']} | {result['cases']} | "
            f"{result['unit']} | **{_number(result['median'])}** | {runs} | "
            f"{_number(result['reference'])} | {_number(result['main_d6b4fda'])} | "
            f"{result['goal']} |"
        )
    return "\n".join(lines)


def select_rows(patterns: Sequence[str] | None, shapes: Sequence[str] = tuple(SHAPES)) -> list[str]:
    """Row names of ``shapes`` matching ``patterns`` (a row name, or a prefix such as
    ``train``; every row of those shapes without patterns)."""
    rows = [row for row in ROWS if row.shape in shapes]
    if not patterns:
        return [row.name for row in rows]
    chosen = []
    for pattern in patterns:
        matches = [row.name for row in rows if row.name == pattern or row.name.startswith(pattern)]
        if not matches:
            raise SystemExit(f"no row {pattern!r}; rows: {', '.join(ROWS_BY_NAME)}")
        chosen += [name for name in matches if name not in chosen]
    return [row.name for row in ROWS if row.name in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="issue 12's speed table for this checkout")
    parser.add_argument(
        "--rows",
        nargs="+",
        help=f"rows or row prefixes (default all): {', '.join(ROWS_BY_NAME)}",
    )
    parser.add_argument(
        "--shape",
        nargs="+",
        default=list(SHAPES),
        choices=[*SHAPES, *GPTJ_SHAPES],
        help="model shapes (default the issue's two; gptj is GPT-J 6B's, for --device cuda)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="instead of the table: profile one training epoch on the first N cases per shape",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (median shown)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--verbose", action="store_true", help="show progress bars and warnings")
    args = parser.parse_args(argv)
    if args.profile is not None:
        for shape in args.shape:
            print(f"## {shape}, one training epoch on {args.profile} cases\n")
            print(profile_training(shape, args.profile, args.threads, args.device) + "\n")
        return 0
    names = select_rows(args.rows, args.shape)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = measure(names, args.repeats, args.threads, args.device, quiet=not args.verbose)
    load_after = os.getloadavg()
    print(format_table(results, args.repeats))
    machine = {
        "checkout": str(Path(__file__).resolve().parents[1]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": args.device,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print("\n" + "  ".join(f"{key}: {value}" for key, value in machine.items()))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
