"""ROME, MEMIT and FT-L: our updates against kmeng01/rome's and kmeng01/memit's, request by
request, on the same model, requests, prefixes and key statistics.

The reference runs from its checkout (``--rome-dir``, ``--memit-dir``) with these run-time
changes and no others: its hard-coded ``"cuda"`` is ``"cpu"``; ``util/globals.py`` reads its
``globals.yml`` from the checkout instead of the working directory; its key statistics
(``get_inv_cov`` / ``get_cov``, which would collect Wikipedia statistics) return the ``C`` we
pass to ours; its cached context templates are set to ours; and for MEMIT under transformers 5,
whose ``GPT2Block`` returns a tensor instead of a tuple, ``compute_z``'s three ``[0]`` that
unpacked the tuple are dropped.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.parity import reference
from benchmarks.parity.setup import (
    REQUESTS,
    Comparison,
    Request,
    key_second_moment,
    model_label,
    relative_difference,
)
from remedi import models
from remedi.methods import common, ft, memit, rome

logger = logging.getLogger(__name__)

REFERENCE_PACKAGES = ("rome", "util", "memit", "baselines", "dsets", "experiments")

WEIGHT_TOLERANCE = 1e-4
"""Relative difference allowed between two ROME or FT updates computed from the same inputs: both
sides run the same float32 forward passes and Adam steps, and differ only in summation order
(batch layout and padding, float32 vs float64 solves)."""

MEMIT_TOLERANCE = 1e-3
"""MEMIT's ``z`` optimisation on a random model never reaches its target: ``delta`` sits on the
0.75 norm clamp and the loss oscillates (the third request without prefixes: 10.970, 11.651,
11.709, 11.282, ... on both sides to every printed digit), which amplifies float32 rounding
about tenfold over ROME's."""


def _globals_patch(root: Path) -> reference.Patch:
    return reference.Patch(
        '"globals.yml"',
        repr(str(root.resolve() / "globals.yml")),
        1,
        "globals.yml read from the checkout",
    )


def rome_patches(root: Path) -> dict[str, list[reference.Patch]]:
    return {
        "rome.compute_v": [reference.cuda_to_cpu(4)],
        "rome.compute_u": [reference.cuda_to_cpu(1)],
        "util.globals": [_globals_patch(root)],
    }


def memit_patches(root: Path) -> dict[str, list[reference.Patch]]:
    unpack = "transformers 5's GPT2Block returns a tensor, not a tuple: dropped its [0]"
    return {
        "memit.compute_z": [
            reference.cuda_to_cpu(4),
            reference.Patch(
                "cur_out[0][0, lookup_idxs[0]]", "cur_out[0, lookup_idxs[0]]", 1, unpack
            ),
            reference.Patch(
                "cur_out[0][i, idx, :] += delta", "cur_out[i, idx, :] += delta", 1, unpack
            ),
            reference.Patch(".output[0][\n", ".output[\n", 1, unpack),
        ],
        "memit.memit_main": [reference.cuda_to_cpu(5)],
        "rome.compute_u": [reference.cuda_to_cpu(1)],
        "util.globals": [_globals_patch(root)],
    }


def _module_names(mt: models.ModelAndTokenizer) -> dict[str, Any]:
    return {
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp",
        "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f",
        "lm_head_module": "transformer.wte",
    }


def _value_optimization(
    mt: models.ModelAndTokenizer, hparams: common.LocateEditHparams
) -> dict[str, Any]:
    """The v*/z optimisation fields ROME's and MEMIT's reference hparams share, from ours."""
    return {
        "fact_token": "subject_last",
        "v_num_grad_steps": hparams.v_num_grad_steps,
        "v_lr": hparams.v_lr,
        "v_loss_layer": mt.num_layers - 1,
        "v_weight_decay": hparams.v_weight_decay,
        "clamp_norm_factor": hparams.clamp_norm_factor,
        "kl_factor": hparams.kl_factor,
    }


def _statistics_and_modules(mt: models.ModelAndTokenizer) -> dict[str, Any]:
    """The statistics fields (unused: the reference is handed our C) and module names."""
    return {
        "mom2_dataset": "wikipedia",
        "mom2_n_samples": 0,
        "mom2_dtype": "float32",
        **_module_names(mt),
    }


def _reference_update(upd_matrix: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The reference's ``upd_matrix_match_shape``: the update in the weight's layout."""
    return upd_matrix if upd_matrix.shape == weight.shape else upd_matrix.T


def compare_rome(
    mt: models.ModelAndTokenizer,
    rome_dir: Path,
    layer: int,
    with_statistics: bool,
    templates: Sequence[str] = ("{}",),
    key_in_residual: str | None = None,
    requests: Sequence[Request] = REQUESTS,
) -> Comparison:
    """kmeng01/rome ``execute_rome`` against our ``rome.compute_update``, one request at a time,
    ``C = I`` or a given ``C``, on ``templates`` (default: no prefixes). With prefixes the two
    differ by design: the reference's closed form uses the bare prompt's key where ours uses the
    averaged key (see :mod:`remedi.methods.rome`).

    ``key_in_residual``: our closed form, where ``RomeHparams`` has that field (``"bare"``: the
    reference's, ``"mean"``: the averaged key throughout); None leaves our default. Without the
    field ours is the averaged-key form.
    """
    moment = key_second_moment(mt, layer) if with_statistics else None
    options: dict[str, Any] = {}
    if key_in_residual is not None:
        options["key_in_residual"] = key_in_residual
    hparams = rome.RomeHparams(
        layer=layer,
        mom2_adjustment=with_statistics,
        context_template_lengths=[],
        kl_prompts=["{} is a"],
        v_stop_loss=5e-2,
        **options,
    )
    closed_form = getattr(hparams, "key_in_residual", "mean")
    patches = rome_patches(rome_dir)
    differences = []
    with reference.reference_modules(
        rome_dir, REFERENCE_PACKAGES, patches, required=["rome/rome_main.py"]
    ):
        rome_main = reference.load("rome.rome_main")
        compute_u = reference.load("rome.compute_u")
        ref_hparams = reference.load("rome.rome_hparams").ROMEHyperParams(
            layers=[layer],
            **_value_optimization(mt, hparams),
            mom2_adjustment=with_statistics,
            context_template_length_params=[],
            **_statistics_and_modules(mt),
        )
        rome_main.CONTEXT_TEMPLATES_CACHE = list(templates)
        if moment is not None:
            inverse = torch.inverse(moment).float()
            compute_u.get_inv_cov = lambda *args, **kwargs: inverse
        for index, request in enumerate(requests):
            deltas = rome_main.execute_rome(
                mt.model, mt.tokenizer, request.reference(index), ref_hparams
            )
            ((weight_name, (left, right)),) = deltas.items()
            weight = mt.model.get_parameter(weight_name)
            ref_delta = _reference_update(left.unsqueeze(1) @ right.unsqueeze(0), weight)
            ours = rome.compute_update(mt, request.ours(), hparams, moment, list(templates))
            differences.append(relative_difference(ours.delta(), ref_delta))
    summary = reference.patch_summary(patches)
    if moment is not None:
        summary.append("rome.compute_u.get_inv_cov: returns C^-1 of the C given to ours")
    prefixes = len(templates) - 1
    summary.append(
        "rome.rome_main.CONTEXT_TEMPLATES_CACHE: "
        + (f"our {prefixes} prefixes" if prefixes else '["{}"] (no prefixes)')
    )
    statistics = "C from 4,096 random-token keys" if with_statistics else "C = I"
    prefix_label = f"{prefixes} prefixes of 10 tokens" if prefixes else "no prefixes"
    if prefixes:
        prefix_label += f", key_in_residual {closed_form}"
    return Comparison(
        name=f"ROME update ({statistics}, {prefix_label})",
        reference="rome/rome_main.py:execute_rome",
        inputs=f"{model_label(mt)}; layer {layer}; {len(requests)} requests one at a time; "
        f"{statistics}; {prefix_label}; 20 v steps",
        quantity="delta W (out x in) per request",
        tolerance=WEIGHT_TOLERANCE,
        max_relative_difference=max(differences),
        differences=differences,
        patches=summary,
        by_design=(
            "with prefixes the reference divides by the bare prompt's key (k_bare . C^-1 k_avg) "
            "and subtracts W k_bare; ours uses k_avg in both (kmeng01/rome PR #44)"
            if prefixes and closed_form == "mean"
            else ""
        ),
    )


def compare_memit(
    mt: models.ModelAndTokenizer,
    memit_dir: Path,
    layers: Sequence[int],
    templates: Sequence[str],
    requests: Sequence[Request] = REQUESTS,
) -> Comparison:
    """kmeng01/memit ``execute_memit`` against our ``memit.compute_update`` on all requests at
    once, the same prefixes (ours, sampled from the model) and the same ``C`` per layer."""
    moments = {layer: key_second_moment(mt, layer) for layer in layers}
    hparams = memit.MemitHparams(
        layers=list(layers),
        v_num_grad_steps=20,
        clamp_norm_factor=0.75,
        mom2_update_weight=15000.0,
        kl_prompts=["{} is a"],
        v_stop_loss=5e-2,
    )
    patches = memit_patches(memit_dir)
    with reference.reference_modules(
        memit_dir, REFERENCE_PACKAGES, patches, required=["memit/memit_main.py"]
    ):
        memit_main = reference.load("memit.memit_main")
        ref_hparams = reference.load("memit.memit_hparams").MEMITHyperParams(
            layers=list(layers),
            layer_selection="all",
            **_value_optimization(mt, hparams),
            mom2_adjustment=True,
            mom2_update_weight=hparams.mom2_update_weight,
            **_statistics_and_modules(mt),
        )
        memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"]] + (
            [list(templates[1:])] if templates[1:] else []
        )
        by_name = {f"transformer.h.{layer}.mlp.c_proj": moments[layer] for layer in layers}
        memit_main.get_cov = lambda model, tok, layer_name, *args, **kwargs: by_name[layer_name]
        deltas = memit_main.execute_memit(
            mt.model, mt.tokenizer, [r.reference(i) for i, r in enumerate(requests)], ref_hparams
        )
        ref_updates = {
            name: _reference_update(
                (adjusted_keys @ residuals.T).float(), mt.model.get_parameter(name)
            )
            for name, (adjusted_keys, residuals) in deltas.items()
        }
    ours = memit.compute_update(
        mt, [r.ours() for r in requests], hparams, moments, templates=list(templates)
    )
    differences = [
        relative_difference(update.delta(), ref_updates[update.weight_name])
        for update in ours.layers
    ]
    summary = reference.patch_summary(patches)
    summary.append("memit.memit_main.get_cov: returns the C given to ours")
    summary.append("memit.memit_main.CONTEXT_TEMPLATES_CACHE: our prefixes")
    return Comparison(
        name="MEMIT update",
        reference="memit/memit_main.py:execute_memit",
        inputs=f"{model_label(mt)}; layers {list(layers)}; {len(requests)} requests in one batch; "
        f"C from 4,096 random-token keys per layer; lambda 15000; {len(templates) - 1} prefixes "
        "of 10 tokens; 20 z steps",
        quantity="delta W (out x in) per layer",
        tolerance=MEMIT_TOLERANCE,
        max_relative_difference=max(differences),
        differences=differences,
        patches=summary,
    )


def compare_ft(
    mt: models.ModelAndTokenizer,
    rome_dir: Path,
    layer: int,
    norm_constraint: float | None = 5e-4,
    requests: Sequence[Request] = REQUESTS[:2],
) -> Comparison:
    """kmeng01/rome's FT (``baselines/ft/ft_main.py:execute_ft``) against our ``ft.edit``, one
    single-token-target request at a time (the reference scores every target token at the
    prompt's last position, we teacher-force: they agree on one-token targets only), with the
    L-infinity bound ``norm_constraint`` (FT-L) or none (``None``: FT)."""
    hparams = ft.FtHparams(layers=[layer], norm_constraint=norm_constraint)
    patches = {
        "baselines.ft.ft_main": [reference.cuda_to_cpu(2)],
        "util.globals": [_globals_patch(rome_dir)],
    }
    differences = []
    with reference.reference_modules(
        rome_dir, REFERENCE_PACKAGES, patches, required=["baselines/ft/ft_main.py"]
    ):
        ft_main = reference.load("baselines.ft.ft_main")
        ref_hparams = reference.load("baselines.ft.ft_hparams").FTHyperParams(
            layers=[layer],
            num_steps=hparams.num_steps,
            lr=hparams.lr,
            weight_decay=hparams.weight_decay,
            kl_factor=0,
            norm_constraint=hparams.norm_constraint,
            **_module_names(mt),
        )
        for index, request in enumerate(requests):
            model = copy.deepcopy(mt.model)  # the reference sets requires_grad on the model
            ref_deltas = ft_main.execute_ft(
                model, mt.tokenizer, [request.reference(index)], ref_hparams
            )
            new = ft.edit(mt, request.ours(), hparams)
            for name, value in new.items():
                ours_delta = value - mt.model.get_parameter(name)
                differences.append(relative_difference(ours_delta, ref_deltas[name]))
    bound = "unconstrained" if norm_constraint is None else f"L-inf {norm_constraint:g}"
    return Comparison(
        name="FT update" if norm_constraint is None else "FT-L update",
        reference="baselines/ft/ft_main.py:execute_ft (kmeng01/rome)",
        inputs=f"{model_label(mt)}; layer {layer}; {len(requests)} one-token-target requests one "
        f"at a time; 25 steps, lr 5e-4, {bound}, weight and bias",
        quantity="delta of c_proj weight and bias per request",
        tolerance=WEIGHT_TOLERANCE,
        max_relative_difference=max(differences),
        differences=differences,
        patches=reference.patch_summary(patches),
    )


def sample_templates(mt: models.ModelAndTokenizer) -> list[str]:
    """Our five random prefixes of 10 tokens (seed 0), ``"{}"`` first: both MEMITs use them."""
    return common.context_templates(mt, [[10, 5]], seed=0)
