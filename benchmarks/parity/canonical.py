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

from pathlib import Path
from typing import Any

import torch

from benchmarks.parity import reference
from benchmarks.parity.setup import Comparison, model_label, relative_difference
from remedi import models
from remedi.canon import scoring
from remedi.data.canonical import CanonicalExample

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
    patches = {
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
