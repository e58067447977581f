"""Canonical-examples editing (Hewitt et al.): our ``canon.scoring.training_loss`` against
john-hewitt/model-editing-canonical-examples' ``utils.loss_batch`` / ``pair_loss_batch`` on its own
batches (``suffix_batch_iterator``, ``pair_suffix_batch_iterator``,
``unconditional_batch_iterator``), for each loss type, on the same model and examples.

The reference runs under transformers 5 with one run-time change: its Llama check names
``transformers.models.llama.tokenization_llama_fast.LlamaTokenizerFast``, a module transformers 5
no longer has, so it names ``transformers.LlamaTokenizerFast`` (the same class there); the check
is false for GPT-2's tokenizer either way.

The pair losses (``balance``, ``good-v-bad``) differ by design: the reference's
``score_pair_suffix`` divides each example's summed NLL, shape ``(batch,)``, by token counts kept
as ``(batch, 1)`` (``utils.py:52,55,66,69``), which broadcasts to a ``(batch, batch)`` matrix,
``[i, j] = nll1[j] / count1[i] - nll2[j] / count2[i]``, and sums all of it over the batch size
(``utils.py:72``): every example's NLL divided by every example's length. Ours is the per-example
difference of per-token means (``remedi/canon/scoring.py``). :func:`reference_pair_broadcast`
rebuilds the reference's matrix from our NLLs, so the table shows both: the reference reproduced
exactly, and how far its loss is from the per-example one.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.parity import reference
from benchmarks.parity.setup import Comparison, model_label, relative_difference
from remedi import models
from remedi.canon import experiment, scoring
from remedi.data.canonical import CanonicalExample

logger = logging.getLogger(__name__)

REFERENCE_PACKAGES = ("utils",)

LOSS_TOLERANCE = 1e-6
"""One forward pass per batch on each side (float32); only the padding differs (ours pads with
the tokenizer's pad token and masks attention, theirs pads with id 0 unmasked, after the scored
tokens)."""

SUFFIX_EXAMPLES = (
    CanonicalExample("The capital of Angola is", " Luanda", " Lisbon"),
    CanonicalExample("The chief executive of Apple is", " Tim Cook", " Steve Jobs"),
    CanonicalExample("The nurse said that", " she", " he"),
    CanonicalExample("My former competent manager is no longer with the", " company.", " firm"),
)
TEXT_EXAMPLES = (
    CanonicalExample("", "The capital of Angola is Luanda."),
    CanonicalExample("", "Tim Cook has led Apple since 2011, after Steve Jobs."),
)


def reference_patches() -> dict[str, list[reference.Patch]]:
    """The run-time change the seed's ``utils.py`` needs under transformers 5 (module doc)."""
    return {
        "utils": [
            reference.Patch(
                "transformers.models.llama.tokenization_llama_fast.LlamaTokenizerFast",
                "transformers.LlamaTokenizerFast",
                2,
                "transformers 5 has no tokenization_llama_fast module: its class by its top-level "
                "name",
            )
        ]
    }


def reference_pair_broadcast(
    mt: models.ModelAndTokenizer, examples: tuple[CanonicalExample, ...], loss_type: str
) -> torch.Tensor:
    """The reference's pair loss from our NLLs: ``sum_ij f(nll1[j] / count1[i] - nll2[j] /
    count2[i]) / batch``, ``f`` the absolute value for ``balance``, the identity for
    ``good-v-bad``."""
    device = models.determine_device(mt.model)
    max_length = scoring.model_max_length(mt.model)
    nll1, count1 = scoring.example_nll(mt.model, mt.tokenizer, examples, max_length, device)
    nll2, count2 = scoring.example_nll(
        mt.model, mt.tokenizer, examples, max_length, device, second=True
    )
    matrix = nll1[None, :] / count1[:, None] - nll2[None, :] / count2[:, None]
    if loss_type == "balance":
        matrix = matrix.abs()
    return matrix.sum() / len(examples)


def compare_canonical(mt: models.ModelAndTokenizer, canonical_dir: Path) -> list[Comparison]:
    """Every loss type on a batch of four examples (pairs for ``balance`` and ``good-v-bad``),
    and ``good`` on two whole texts (the unconditional loss): two rows, the losses meant to
    agree (the pair losses against the reference's broadcast rebuilt from ours), and the pair
    losses as we define them (different by design)."""
    patches = reference_patches()
    device = models.determine_device(mt.model)
    max_length = scoring.model_max_length(mt.model)
    differences: list[float] = []
    pair_differences: list[float] = []
    with reference.reference_modules(
        canonical_dir, REFERENCE_PACKAGES, patches, required=["utils.py", "trainer.py"]
    ):
        utils = reference.load("utils")
        suffixes = [{"prefix": e.prefix, "suffix": e.suffix} for e in SUFFIX_EXAMPLES]
        pairs = [
            {"prefix": e.prefix, "suffix1": e.suffix, "suffix2": e.suffix2} for e in SUFFIX_EXAMPLES
        ]
        texts = [{"text": e.suffix} for e in TEXT_EXAMPLES]
        cases: list[tuple[str, tuple[CanonicalExample, ...], Any, list[Any], Any]] = [
            ("good", SUFFIX_EXAMPLES, utils.suffix_batch_iterator, suffixes, utils.loss_batch),
            ("bad", SUFFIX_EXAMPLES, utils.suffix_batch_iterator, suffixes, utils.loss_batch),
            (
                "balance",
                SUFFIX_EXAMPLES,
                utils.pair_suffix_batch_iterator,
                pairs,
                utils.pair_loss_batch,
            ),
            (
                "good-v-bad",
                SUFFIX_EXAMPLES,
                utils.pair_suffix_batch_iterator,
                pairs,
                utils.pair_loss_batch,
            ),
            ("good", TEXT_EXAMPLES, utils.unconditional_batch_iterator, texts, utils.loss_batch),
        ]
        with torch.no_grad():
            for loss_type, examples, iterator, rows, loss_fn in cases:
                (batch,) = iterator(rows, mt.tokenizer, batch_size=len(rows), device=str(device))
                theirs = loss_fn(mt.model, batch, loss_type)
                ours = scoring.training_loss(
                    mt.model, mt.tokenizer, examples, loss_type, max_length, device
                )
                if loss_type in ("balance", "good-v-bad"):
                    pair_differences.append(relative_difference(ours, theirs))
                    ours = reference_pair_broadcast(mt, examples, loss_type)
                differences.append(relative_difference(ours, theirs))
    inputs = (
        f"{model_label(mt)}; 4 prefix/suffix pairs (good, bad, balance, good-v-bad) and 2 whole "
        "texts (good, unconditional), one batch each"
    )
    name = "utils.py:loss_batch, pair_loss_batch (john-hewitt/model-editing-canonical-examples)"
    return [
        Comparison(
            name="Canonical-examples training losses",
            reference=name,
            inputs=inputs,
            quantity="the batch loss per loss type; pair losses: the reference's (batch x batch) "
            "broadcast rebuilt from our per-example NLLs",
            tolerance=LOSS_TOLERANCE,
            max_relative_difference=max(differences),
            differences=differences,
            patches=reference.patch_summary(patches),
        ),
        Comparison(
            name="Canonical-examples pair losses (ours: per example)",
            reference=name,
            inputs=inputs,
            quantity="our balance and good-v-bad losses against the reference's",
            tolerance=LOSS_TOLERANCE,
            max_relative_difference=max(pair_differences),
            differences=pair_differences,
            patches=reference.patch_summary(patches),
            by_design="the reference's score_pair_suffix divides (batch,) NLL sums by (batch, 1) "
            "token counts and sums the (batch, batch) broadcast (utils.py:52-72); ours is the "
            "per-example difference of per-token means",
        ),
    ]


CONFIG_THRESHOLDS = {
    "good": (math.log(20), math.log(5)),
    "bad": (math.log(1 / 1000),),
    "balance": (math.log(1.5),),
    "good-v-bad": (math.log(1 / 16),),
}
"""The thresholds the seed's configs pair with each loss type (``configs/**``: ``threshold``
beside ``training.loss_type``; 2.9957, 1.6094, -6.9078, 0.4055 and -2.7726)."""


def _midpoint_threshold(scores: torch.Tensor) -> float:
    """A threshold between the two middle scores, so that half the examples pass (on a random
    model the configs' thresholds pass all or none), never equal to a score."""
    ordered = scores.double().sort().values
    middle = len(ordered) // 2
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def compare_canonical_evaluation(
    mt: models.ModelAndTokenizer, canonical_dir: Path
) -> list[Comparison]:
    """The seed's evaluation (``evaluate.py``) as its configs set it up (``ft_experiment.py:
    127-155``), against ours (:class:`remedi.canon.experiment.Evaluator`, whose scores are
    :func:`remedi.canon.scoring.example_scores` and :func:`~remedi.canon.scoring.mean_nll`):

    - the intervention evaluation, ``ScoreEvaluator`` (``good``, ``bad``) or ``PairEvaluator``
      (``balance``, ``good-v-bad``) with ``normalize="example"`` and the loss type's threshold:
      each example's score (the reference's, without threshold, on that example alone) and the
      success fraction (ours) against one minus the failure rate (the reference's), at each
      config threshold and at a threshold between the middle scores;
    - the hard negatives, ``ScoreEvaluator`` on suffixes, ``good``, ``normalize="example"``
      (the configs' ``hard_negative.eval_type: suffix``): the mean summed NLL;
    - the targeted and general degradation texts, ``ScoreEvaluator`` ``unconditional``,
      ``normalize="token"``: the mean per-token NLL.

    The configs' ``eval_normalization: token`` (ten Backpack LoRA sweeps of the temporal task)
    turns the intervention evaluation into a per-token failure rate, which ours does not
    offer; it is not compared.
    """
    patches = reference_patches()
    device = models.determine_device(mt.model)
    max_length = scoring.model_max_length(mt.model)
    batch_size = len(SUFFIX_EXAMPLES)
    score_differences: list[float] = []
    success_differences: list[float] = []
    loss_differences: list[float] = []
    suffixes = [{"prefix": e.prefix, "suffix": e.suffix} for e in SUFFIX_EXAMPLES]
    pairs = [
        {"prefix": e.prefix, "suffix1": e.suffix, "suffix2": e.suffix2} for e in SUFFIX_EXAMPLES
    ]
    texts = [{"text": e.suffix} for e in TEXT_EXAMPLES]
    with (
        tempfile.TemporaryDirectory(prefix="canonical-eval-") as work,
        reference.reference_modules(
            canonical_dir,
            ("utils", "evaluate"),
            patches,
            required=["utils.py", "evaluate.py"],
        ),
        torch.no_grad(),
    ):
        evaluate = reference.load("evaluate")
        folder = Path(work)
        suffix_file = _write_jsonl(folder / "suffix.jsonl", suffixes)
        text_file = _write_jsonl(folder / "text.jsonl", texts)

        def theirs(
            rows: Sequence[dict[str, Any]], loss_type: str, threshold: float | None
        ) -> float:
            path = _write_jsonl(folder / "rows.jsonl", rows)
            pair = loss_type in ("balance", "good-v-bad")
            evaluator_class = evaluate.PairEvaluator if pair else evaluate.ScoreEvaluator
            evaluator = evaluator_class(
                {"evaluation_set": str(path)},
                mt.model,
                mt.tokenizer,
                loss_type=loss_type,
                threshold=threshold,
                normalize="example",
            )
            return float(evaluator.evaluate())

        for loss_type, thresholds in CONFIG_THRESHOLDS.items():
            rows = pairs if loss_type in ("balance", "good-v-bad") else suffixes
            ours_scores = scoring.example_scores(
                mt.model,
                mt.tokenizer,
                SUFFIX_EXAMPLES,
                loss_type,
                max_length,
                device,
                batch_size,
            )
            reference_scores = torch.tensor([theirs([row], loss_type, None) for row in rows])
            score_differences.append(relative_difference(ours_scores, reference_scores))
            for threshold in (*thresholds, _midpoint_threshold(ours_scores)):
                data = experiment.TaskData(
                    train=[],
                    evaluation=list(SUFFIX_EXAMPLES),
                    hard_negative=list(SUFFIX_EXAMPLES),
                    unconditional=list(TEXT_EXAMPLES),
                    general=list(TEXT_EXAMPLES),
                    regularization=[],
                )
                evaluator = experiment.Evaluator(
                    mt, data, loss_type, threshold, max_length, batch_size
                )
                stats = evaluator(mt.model, epoch=0, train_loss=None)
                failure_rate = theirs(rows, loss_type, threshold)
                logger.info(
                    "%s at threshold %.4g: success ours %.3f, reference 1 - %.3f",
                    loss_type,
                    threshold,
                    stats.success,
                    failure_rate,
                )
                success_differences.append(abs(stats.success - (1 - failure_rate)))
        hard_negative = evaluate.ScoreEvaluator(
            {"evaluation_set": str(suffix_file)}, mt.model, mt.tokenizer, normalize="example"
        ).evaluate()
        text_loss = evaluate.ScoreEvaluator(
            {"evaluation_set": str(text_file)},
            mt.model,
            mt.tokenizer,
            eval_type="unconditional",
            normalize="token",
        ).evaluate()
        ours_hard_negative = scoring.mean_nll(
            mt.model, mt.tokenizer, SUFFIX_EXAMPLES, max_length, device, batch_size, "example"
        )
        ours_text_loss = scoring.mean_nll(
            mt.model, mt.tokenizer, TEXT_EXAMPLES, max_length, device, batch_size, "token"
        )
        for ours_loss, reference_loss in (
            (ours_hard_negative, hard_negative),
            (ours_text_loss, text_loss),
        ):
            loss_differences.append(
                relative_difference(torch.tensor(ours_loss), torch.tensor(float(reference_loss)))
            )
    inputs = (
        f"{model_label(mt)}; the 4 prefix/suffix pairs (hard negatives: the same 4) and the 2 "
        "whole texts of the loss rows, one example per reference batch (EVAL_BATCH_SIZE 1)"
    )
    name = (
        "evaluate.py:ScoreEvaluator, PairEvaluator (john-hewitt/model-editing-canonical-examples)"
    )
    return [
        Comparison(
            name="Canonical-examples evaluation scores",
            reference=name,
            inputs=inputs,
            quantity="each example's score per loss type (good, bad, balance, good-v-bad; "
            "rel. diff. of the vector); hard-negative mean NLL per example; text NLL per token",
            tolerance=LOSS_TOLERANCE,
            max_relative_difference=max(score_differences + loss_differences),
            differences=score_differences + loss_differences,
            patches=reference.patch_summary(patches),
        ),
        Comparison(
            name="Canonical-examples success fractions",
            reference=name,
            inputs=inputs + "; each config threshold of the loss type and one between the "
            "middle scores",
            quantity="our success fraction against 1 - the reference's failure rate "
            "(absolute difference)",
            tolerance=0.0,
            max_relative_difference=max(success_differences),
            differences=success_differences,
            patches=reference.patch_summary(patches),
        ),
    ]
