"""ROME (Meng et al. 2022): a rank-one update of one layer's MLP output projection.

For a request (prompt mentioning a subject, new target), as kmeng01/rome's ``execute_rome``
(``rome/rome_main.py:59-134``) by default:

1. the prefixes: the bare prompt ``"{}"`` and, with the default ``context_template_lengths``
   ``[[5, 10], [10, 10]]`` and ``prefix_source`` ``"eos"``, ten texts of 5 tokens and ten of 10
   sampled (top-k 5) after the end-of-text token, each followed by ``". {}"``
   (:func:`~remedi.methods.common.context_templates`; ``rome/rome_main.py:154-177``);
2. the key ``k̄`` is the projection's input at the subject's last token averaged over the prompt
   behind each of the 21 prefixes (the bare prompt weighs 1/21; ``rome/compute_u.py:83-90``);
3. the value ``v*`` is the MLP output at the subject's last token in the bare prompt plus a vector
   ``delta`` optimised with Adam so that the model says the target after every prefixed prompt,
   under a KL term that keeps "{subject} is a" predictions and a weight decay on ``delta``,
   ``delta`` clamped to ``clamp_norm_factor`` times the clean output's norm
   (``rome/compute_v.py:72-166``);
4. with ``C = E[k k^T]`` (:mod:`remedi.methods.stats`) and the bare prompt's own key ``k0``, the
   update of the (out, in) weight is ``(v* - W k0 - b) (C^-1 k̄)^T / (k0^T C^-1 k̄)``
   (``rome/compute_u.py:107-120`` normalises ``u = C^-1 k̄``; ``rome/compute_v.py:170-181`` reads
   ``k0`` and ``W k0 + b`` in the bare prompt and divides by ``k0 . u``): the edited layer maps
   ``k0`` to ``v*``, and any key ``k`` gets ``(k^T C^-1 k̄ / k0^T C^-1 k̄)`` of the change.

``key_in_residual="mean"`` (this repository's form before; kept as an option) puts ``k̄`` in the
residual and the denominator too, ``(v* - W k̄ - b) (C^-1 k̄)^T / (k̄^T C^-1 k̄)``, so the edited
layer maps ``k̄`` to ``v*``. kmeng01/rome's denominator ``k0^T C^-1 k̄`` can be small when the
prefixes move the key away from ``k0``, and the update's norm then blows up (kmeng01/rome pull
request #44, which puts ``k̄`` in the denominator only; "Rebuilding ROME", Gupta et al. 2024).

Where we differ: the optimisation of ``delta`` and the closed form run in float32 (float64 for
the solve) whatever the model's dtype (in half precision the reference's loss and solve can
overflow to NaN); the sampled prefixes have their braces made spaces (ROME's ``str.format``
would fail on them); and they are sampled once per editor from ``seed``, not cached per process.

Functions here return new weights and never write into the model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from remedi import errors, models
from remedi.methods import common, stats
from remedi.methods.base import MethodSetup, WeightEditor, layers_label

logger = logging.getLogger(__name__)

KEYS_IN_RESIDUAL = ("bare", "mean")
"""ROME's closed forms (:attr:`RomeHparams.key_in_residual`)."""


@dataclass
class RomeHparams(common.LocateEditHparams):
    """ROME's hyperparameters (names as in kmeng01/rome's ``hparams/ROME/*.json``)."""

    method_name: ClassVar[str] = "ROME"

    layer: int
    context_template_lengths: list[list[int]] = field(
        default_factory=lambda: [[5, 10], [10, 10]], kw_only=True
    )
    """ROME's: ten prefixes of 5 tokens and ten of 10 (kmeng01/rome ``hparams/ROME/*.json:13``)."""
    prefix_source: str = field(default="eos", kw_only=True)
    """ROME's: prefixes sampled after the end-of-text token (``rome/rome_main.py:165``)."""
    key_in_residual: str = field(default="bare", kw_only=True)
    """Which key the edited layer maps to ``v*`` (in the residual and the denominator):
    ``"bare"``, the bare prompt's (kmeng01/rome ``rome/compute_v.py:170-181``), or ``"mean"``, the
    key averaged over the prefixes that also gives the update's direction (ours before)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.key_in_residual not in KEYS_IN_RESIDUAL:
            raise errors.UsageError(
                f"ROME's key_in_residual must be one of {', '.join(KEYS_IN_RESIDUAL)}, got "
                f"{self.key_in_residual!r}"
            )


@dataclass
class RankOneUpdate:
    """A ROME edit: ``delta = outer(right, left)`` added to the (out, in) weight."""

    weight_name: str
    key: torch.Tensor
    """The averaged key ``k̄`` (in,), whose ``C^-1 k̄`` is the update's direction."""
    value: torch.Tensor
    """The target MLP output ``v*`` (out,)."""
    left: torch.Tensor
    """``C^-1 k̄ / (k_r^T C^-1 k̄)`` (in,), ``k_r`` the ``residual_key``."""
    right: torch.Tensor
    """``v* - W k_r - b`` (out,)."""
    transposed: bool
    residual_key: torch.Tensor
    """``k_r``, the key the edited layer maps to ``v*``: the bare prompt's (kmeng01's form) or
    ``k̄`` (``key_in_residual="mean"``) (in,)."""

    def delta(self) -> torch.Tensor:
        """The update in the weight's own layout (transposed for GPT-2's Conv1D), float32."""
        out_in = torch.outer(self.right, self.left)
        return out_in.T if self.transposed else out_in

    def new_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + delta`` in the weight's dtype and device (a new tensor), checked by
        :func:`~remedi.methods.common.cast_edited_weight` (half precision overflows or loses
        part of the update)."""
        delta = self.delta().to(weight.device)
        edited = weight.detach().float() + delta
        return common.cast_edited_weight(self.weight_name, weight, edited, "ROME")

    def new_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``{weight_name: W + delta}`` for the model's current ``W``."""
        return {self.weight_name: self.new_weight(model.get_parameter(self.weight_name))}

    def nbytes(self) -> int:
        vectors = (self.key, self.value, self.left, self.right, self.residual_key)
        return sum(vector.numel() * vector.element_size() for vector in vectors)


def subject_keys(
    mt: models.ModelAndTokenizer, layer: int, texts: list[str], subject: str
) -> torch.Tensor:
    """The projection's input at the subject's last token of each text, float32 (n, in)."""
    projection = models.determine_mlp_output(mt.model, layer)
    batch = common.edit_batch(mt.tokenizer, texts, subject).to(mt.device)
    with torch.no_grad(), common.record_mlp_keys(mt.model, projection) as recorded:
        mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.arange(len(texts), device=batch.input_ids.device)
    keys = recorded["keys"].input
    assert keys is not None  # the projection ran in the forward pass above
    return keys[rows, batch.subject_positions].float()


def compute_value(
    mt: models.ModelAndTokenizer,
    request: common.EditRequest,
    hparams: RomeHparams,
    texts: list[str],
) -> torch.Tensor:
    """ROME's ``v*``: the MLP output at the subject that makes the model say the target (out,)."""
    projection = models.determine_mlp_output(mt.model, hparams.layer)
    return common.optimize_value(
        mt, request, texts, projection.module_path, hparams.value_optimization()
    )


def compute_update(
    mt: models.ModelAndTokenizer,
    request: common.EditRequest,
    hparams: RomeHparams,
    second_moment: torch.Tensor | None,
    templates: list[str] | None = None,
) -> RankOneUpdate:
    """The rank-one update that writes ``request`` at ``hparams.layer``.

    Args:
        second_moment: ``C = E[k k^T]`` of the layer's keys; required when
            ``hparams.mom2_adjustment`` (else the update uses ``C = I``).
        templates: Random prefixes (``"{}"`` marks the prompt; the first should be ``"{}"``
            itself, whose subject output ``v*`` starts from); default: sampled with
            :func:`~remedi.methods.common.prefix_templates` from ``hparams``.

    Raises:
        errors.UsageError: The layer is out of range, or ``C`` is missing or of the wrong size.
    """
    common.check_layers(mt, [hparams.layer])
    projection = models.determine_mlp_output(mt.model, hparams.layer)
    if hparams.mom2_adjustment:
        if second_moment is None:
            raise errors.UsageError("ROME with mom2_adjustment needs the key statistics C")
        if tuple(second_moment.shape) != (projection.in_features,) * 2:
            raise errors.MismatchError(
                f"key statistics of shape {tuple(second_moment.shape)} do not fit "
                f"{projection.module_path} ({projection.in_features} inputs)"
            )
    if templates is None:
        templates = common.prefix_templates(mt, hparams)
    texts = [template.replace("{}", request.prompt) for template in templates]

    key = subject_keys(mt, hparams.layer, texts, request.subject).mean(dim=0)
    value = compute_value(mt, request, hparams, texts)

    if hparams.key_in_residual == "bare":
        residual_key = subject_keys(mt, hparams.layer, [request.prompt], request.subject)[0]
    else:
        residual_key = key
    module = mt.model.get_submodule(projection.module_path)
    with torch.no_grad():
        current = module(residual_key.to(dtype=mt.dtype).unsqueeze(0)).squeeze(0).float()
    if hparams.mom2_adjustment:
        assert second_moment is not None
        moment = common.shrink_moment(second_moment.to(key.device), hparams.mom2_shrinkage)
        inverse_key = torch.linalg.solve(moment, key.double()).float()
    else:
        inverse_key = key.clone()
    denominator = torch.dot(inverse_key, residual_key)
    left = inverse_key / denominator
    right = value - current
    update = RankOneUpdate(
        projection.weight_name,
        key,
        value,
        left,
        right,
        projection.transposed,
        residual_key,
    )
    logger.info(
        "ROME at layer %d (%s key in the residual): |v* - W k_r - b| %.3f, "
        "k_r^T C^-1 k_mean %.4g, |delta W| %.3f",
        hparams.layer,
        hparams.key_in_residual,
        right.norm().item(),
        denominator.item(),
        right.norm().item() * left.norm().item(),
    )
    return update


def edit(
    mt: models.ModelAndTokenizer,
    request: common.EditRequest,
    hparams: RomeHparams,
    second_moment: torch.Tensor | None,
    templates: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """New values of the edited parameters (one weight) for ``request``: ``{name: W + delta}``."""
    return compute_update(mt, request, hparams, second_moment, templates).new_weights(mt.model)


class RomeEditor(WeightEditor):
    """ROME prepared for one model: its hyperparameters, key statistics and random prefixes."""

    name = "rome"

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        hparams: RomeHparams,
        second_moment: stats.SecondMoment | None,
        templates: list[str] | None = None,
    ):
        self.hparams = hparams
        self.second_moment = second_moment
        self.label = layers_label("ROME", [hparams.layer])
        self.templates = templates or common.prefix_templates(mt, hparams)

    def details(self) -> dict[str, str]:
        details = super().details()
        if self.second_moment is not None:
            for key in ("dataset", "tokens", "weight_sha256"):
                details[f"stats_{key}"] = self.second_moment.metadata.get(key, "")
        return details

    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[common.EditRequest]
    ) -> RankOneUpdate:
        self.check_requests(requests)
        moment = self.second_moment.moment if self.second_moment is not None else None
        return compute_update(mt, requests[0], self.hparams, moment, self.templates)


def prepare(mt: models.ModelAndTokenizer, hparams: RomeHparams, setup: MethodSetup) -> RomeEditor:
    """ROME for ``mt``: the key statistics of ``hparams.layer`` loaded from ``setup``'s cache or
    computed over its corpus (none without ``mom2_adjustment``).

    Raises:
        errors.UsageError: The layer is out of range.
    """
    common.check_layers(mt, [hparams.layer])
    moment = None
    if hparams.mom2_adjustment:
        moment = stats.second_moment(
            mt,
            hparams.layer,
            setup.statistics_corpus(mt, hparams.stats_dataset),
            setup.stats_num_texts or hparams.stats_num_texts,
            cache_dir=setup.statistics_dir(),
        )
    return RomeEditor(mt, hparams, moment)
