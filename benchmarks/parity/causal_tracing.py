"""Causal tracing: our ``tracing.trace_prompt`` against kmeng01/rome's
``experiments/causal_trace.py`` on the same prompt, target token and noise draws.

ROME draws its noise from numpy's ``RandomState(1)`` in every run (causal_trace.py:167); ours
draws it once per case from torch, seeded. For the comparison our draw is replaced (for the call
only) by ROME's: ``noise_scale * RandomState(1).randn(samples, subject tokens, hidden)``, which
is what every ROME run adds. The reference needs its ``make_inputs`` default device ``"cuda"``
made ``"cpu"`` and its ``globals.yml`` read from the checkout; nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.parity import reference
from benchmarks.parity.setup import REQUESTS, Comparison, model_label, relative_difference
from remedi import models, tracing

REFERENCE_PACKAGES = ("rome", "util", "dsets", "experiments")

NOISE_TOLERANCE = 1e-6
"""The noise level is one standard deviation (ours in float64, theirs in float32)."""

TRACE_TOLERANCE = 1e-4
"""No optimisation is involved: the scores come from the same forward passes (ours batched, with
the corrupted prefix's key/value cache reused; theirs one restoration per pass), float32. An
indirect effect is a difference of two probabilities of about 2e-5 on a random model, so the
probabilities' float32 rounding (1e-7 relative) weighs about 1e-5 of an effect."""


@contextlib.contextmanager
def rome_noise() -> Iterator[None]:
    """Within the body, :func:`remedi.tracing.subject_noise` returns ROME's draw
    (``RandomState(1)``, float64) instead of ours."""

    def drawn(
        num_samples: int, num_tokens: int, hidden_size: int, scale: float, seed: int
    ) -> torch.Tensor:
        draw = np.random.RandomState(1).randn(num_samples, num_tokens, hidden_size)
        return scale * torch.from_numpy(draw)

    original = tracing.subject_noise
    tracing.subject_noise = drawn
    try:
        yield
    finally:
        tracing.subject_noise = original


def compare_tracing(
    mt: models.ModelAndTokenizer, rome_dir: Path, num_samples: int = 10, window: int = 3
) -> list[Comparison]:
    """Two rows: ROME's ``s3`` noise level, and the indirect-effect grids (residual, window 1;
    MLP and attention, ``window``) of each request's prompt, traced for the request's target."""
    patches = {
        "experiments.causal_trace": [reference.cuda_to_cpu(2)],
        "util.globals": [
            reference.Patch(
                '"globals.yml"',
                repr(str(rome_dir.resolve() / "globals.yml")),
                1,
                "globals.yml read from the checkout",
            )
        ],
    }
    subjects = [request.subject for request in REQUESTS]
    scale = tracing.noise_scale_for(mt, subjects, 3.0, distinct=False)
    settings = tracing.TraceSettings(
        noise_scale=scale,
        num_samples=num_samples,
        kinds=["residual", "mlp", "attn"],
        windows=[1, window],
    )
    differences: list[float] = []
    with reference.reference_modules(
        rome_dir, REFERENCE_PACKAGES, patches, required=["experiments/causal_trace.py"]
    ):
        trace = reference.load("experiments.causal_trace")
        ref_scale = 3 * trace.collect_embedding_std(mt, subjects)
        for request in REQUESTS:
            prompt = request.prompt.format(request.subject)
            with rome_noise():
                ours = tracing.trace_prompt(
                    mt, prompt, request.subject, request.target, settings, require_correct=False
                )
            inputs = trace.make_inputs(mt.tokenizer, [prompt] * (num_samples + 1))
            subject_range = trace.find_token_range(
                mt.tokenizer, inputs["input_ids"][0], request.subject
            )
            if list(subject_range) != ours.subject_range:
                raise AssertionError(
                    f"subject ranges differ: ours {ours.subject_range}, ROME's {subject_range}"
                )
            common_args = dict(noise=scale)
            low = trace.trace_with_patch(
                mt.model, inputs, [], ours.target_id, subject_range, **common_args
            ).item()
            grids = {
                "residual/1": trace.trace_important_states(
                    mt.model, mt.num_layers, inputs, subject_range, ours.target_id, **common_args
                ),
                **{
                    f"{kind}/{window}": trace.trace_important_window(
                        mt.model,
                        mt.num_layers,
                        inputs,
                        subject_range,
                        ours.target_id,
                        kind=kind,
                        window=window,
                        **common_args,
                    )
                    for kind in ("mlp", "attn")
                },
            }
            corrupted = ours.corrupted()
            differences.append(relative_difference(torch.tensor(corrupted), torch.tensor(low)))
            for key, grid in grids.items():
                kind, size = key.split("/")
                ours_effects = torch.from_numpy(ours.indirect_effects(kind, int(size)))
                differences.append(relative_difference(ours_effects, grid.double() - low))
    summary = reference.patch_summary(patches)
    summary.append("remedi.tracing.subject_noise: ROME's RandomState(1) draw, for the call")
    inputs = (
        f"{model_label(mt)}; {len(REQUESTS)} prompts, each traced for its request's target; "
        f"{num_samples} noise samples"
    )
    return [
        Comparison(
            name="Causal tracing noise level (s3)",
            reference="experiments/causal_trace.py:collect_embedding_std",
            inputs=f"{model_label(mt)}; the {len(subjects)} subjects",
            quantity="3 x std of the subjects' token embeddings",
            tolerance=NOISE_TOLERANCE,
            max_relative_difference=abs(scale - ref_scale) / abs(ref_scale),
            differences=[abs(scale - ref_scale) / abs(ref_scale)],
            patches=summary[:-1],
        ),
        Comparison(
            name="Causal tracing scores",
            reference="experiments/causal_trace.py:trace_with_patch, trace_important_states, "
            "trace_important_window",
            inputs=f"{inputs}; residual window 1, MLP and attention window {window}",
            quantity="p(corrupted) and the (token x layer) indirect-effect grids, p(restored) - "
            "p(corrupted), per prompt and kind",
            tolerance=TRACE_TOLERANCE,
            max_relative_difference=max(differences),
            differences=differences,
            patches=summary,
        ),
    ]
