"""The KL term's weight against the reference's: its last-sample KL x lam_kl 10 vs our batch mean.

    python -m benchmarks.bench_kl_weight                                   # SmolLM2, random editor
    python -m benchmarks.bench_kl_weight --editors results/editors_counterfact_smollm2-135m

The reference (evandez/REMEDI ``remedi/editors.py:389-400``) keeps only the last sample of a
batch in its KL term and divides it by the batch size; ours averages every sample's KL. On
``--batches`` batches of ``--batch-size`` real CounterFact samples (EasyEdit's train file, order
shuffled with ``--seed``) this computes, for each batch:

- ``reference``: the reference's term, ``REFERENCE_LAM_KL * KL(last sample) / B`` (the last sample
  whose KL range is not empty, as its loop skips empty ones);
- ``ours``: our term at ``reference_equivalent_lam_kl(10, B)`` (at batch 16 the default
  ``lam_kl``, 0.625), through the batched loss;
- ``old_default``: our term at lam_kl 10, the default before it was rescaled.

Each sample's KL comes from the loss on that sample alone. The figures are the means over batches
(with the standard error of the reference's, which rests on one sample per batch), their ratio,
and ``reference_any_last``: the reference's term averaged over which sample of each batch is last,
which is our term up to rounding. Correctness, not speed: it lives here because it loads a real
model (about 10 minutes for 64 batches on one shared CPU core).

Measured (SmolLM2-135M, float32, CPU, layer 2, 64 batches of 16, seed 0), mean over batches:

| editor | reference (lam_kl 10) | ours (lam_kl 0.625) | ours / reference | ours at lam_kl 10 |
|---|---:|---:|---:|---:|
| random linear | 1.651 ± 0.204 | 1.625 | 0.984 | 26.01 (15.7x) |
| the table's trained editor | 2.504 ± 0.178 | 2.409 | 0.962 | 38.55 (15.4x) |

(± is the standard error of the reference's term; the trained editor is
``results/editors_counterfact_smollm2-135m``, layer 2, trained with the SmolLM2 recipe.)
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.common import benchmark_parser, easyedit_counterfact_file, model_figures, report
from remedi import data, editors, models, precompute, training

OLD_DEFAULT_LAM_KL = 10.0
KL_ONLY = training.LossWeights(lam_m=None, lam_u=None, lam_kl=1.0)


def _editor(
    mt: models.ModelAndTokenizer, layer: int, run: Path | None, seed: int
) -> editors.Editor:
    """The linear editor ``run`` trained at ``layer``; without a run, a random one whose
    directions are about as long as the hidden states it reads."""
    if run is not None:
        return training.load_run_editor(run, layer, mt=mt)
    torch.manual_seed(seed)
    editor = editors.new_editor("linear", mt, layer)
    hidden_size = models.determine_hidden_size(mt.model)
    with torch.no_grad():
        editor.get_parameter("w.weight").normal_(std=1 / math.sqrt(hidden_size))
    return editor.to(models.determine_dtype(mt.model))


def _kl_of_each_sample(
    mt: models.ModelAndTokenizer, editor: editors.Editor, batch: precompute.EditorInputs
) -> list[float]:
    """Each sample's KL term (summed over its positions), from the loss on it alone."""
    return [
        training.editing_loss(mt, editor, batch.select([row]), KL_ONLY)[1]["kl"]
        for row in range(len(batch))
    ]


def _reference_term(kls: Sequence[float], batch: precompute.EditorInputs) -> float:
    """The reference's KL term: the last sample with a non-empty KL range, over the batch size."""
    last_entity = batch.entity_token_ranges[:, 1] - 1
    nonempty = (batch.prompt_lengths - 1 > last_entity).tolist()
    last = max((row for row, keep in enumerate(nonempty) if keep), default=None)
    kl_last = 0.0 if last is None else kls[last]
    return training.REFERENCE_LAM_KL * kl_last / len(kls)


def benchmark(
    model: str,
    device: str,
    batches: int,
    batch_size: int,
    layer: int,
    editors_run: Path | None,
    seed: int,
) -> dict:
    mt = models.load_model(model, device=device)
    dataset = data.load_dataset("counterfact_easyedit", file=easyedit_counterfact_file())
    indices = list(range(len(dataset)))
    random.Random(seed).shuffle(indices)
    rows = [dataset[index] for index in indices[: batches * batch_size]]
    inputs = precompute.editor_inputs(mt, rows, [layer])
    editor = _editor(mt, layer, editors_run, seed)

    reference, reference_any_last, ours, old_default = [], [], [], []
    lam_kl = training.reference_equivalent_lam_kl(training.REFERENCE_LAM_KL, batch_size)
    ours_weights = training.LossWeights(lam_m=None, lam_u=None, lam_kl=lam_kl)
    with torch.no_grad():
        for batch in inputs.batches(batch_size):
            kls = _kl_of_each_sample(mt, editor, batch)
            reference.append(_reference_term(kls, batch))
            reference_any_last.append(training.REFERENCE_LAM_KL * statistics.fmean(kls) / len(kls))
            loss, terms = training.editing_loss(mt, editor, batch, ours_weights)
            ours.append(loss.item())
            old_default.append(OLD_DEFAULT_LAM_KL * terms["kl"])

    def mean(values: list[float]) -> float:
        return round(statistics.fmean(values), 6)

    reference_se = statistics.stdev(reference) / math.sqrt(len(reference))
    return {
        **model_figures(mt),
        "layer": layer,
        "editor": str(editors_run) if editors_run else "random linear",
        "batches": len(ours),
        "batch_size": batch_size,
        "reference_lam_kl": training.REFERENCE_LAM_KL,
        "lam_kl": lam_kl,
        "default_lam_kl": training.DEFAULT_LAM_KL,
        "reference_per_batch": [round(value, 5) for value in reference],
        "ours_per_batch": [round(value, 5) for value in ours],
        "reference_mean": mean(reference),
        "reference_standard_error": round(reference_se, 6),
        "ours_mean": mean(ours),
        "ours_over_reference": round(statistics.fmean(ours) / statistics.fmean(reference), 4),
        "reference_any_last_mean": mean(reference_any_last),
        "old_default_mean": mean(old_default),
        "old_default_over_reference": round(
            statistics.fmean(old_default) / statistics.fmean(reference), 4
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = benchmark_parser(
        "the KL term at the default lam_kl against the reference's last-sample term",
        "a real model by name (default smollm2-135m)",
    )
    parser.set_defaults(model="smollm2-135m")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=training.REFERENCE_BATCH_SIZE)
    parser.add_argument("--layer", type=int, default=2, help="edit layer (default 2)")
    parser.add_argument(
        "--editors", type=Path, help="a training run whose linear editor at --layer is used"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample order and random editor")
    args = parser.parse_args(argv)
    figures = benchmark(
        args.model,
        args.device,
        args.batches,
        args.batch_size,
        args.layer,
        args.editors,
        args.seed,
    )
    report(figures, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
