"""ROME (Meng et al. 2022): a rank-one update of one layer's MLP output projection.

For a request (prompt mentioning a subject, new target):

1. the key ``k`` is the projection's input at the subject's last token, averaged over the prompt
   behind random prefixes (:func:`~remedi.methods.common.context_templates`);
2. the value ``v*`` is the MLP output at the subject's last token plus a vector ``delta``
   optimised with Adam so that the model says the target after every prefixed prompt, under a KL
   term that keeps "{subject} is a" predictions and a weight decay on ``delta``, ``delta`` clamped
   to ``clamp_norm_factor`` times the clean output's norm (ROME's ``compute_v``);
3. with ``C = E[k k^T]`` (:mod:`remedi.methods.stats`), the update of the (out, in) weight is
   ``(v* - W k - b) (C^-1 k)^T / (k^T C^-1 k)``, so that the edited layer maps ``k`` to ``v*``.

The same averaged ``k`` is used in 1 and 3. ROME's reference used the un-averaged key in the
denominator and residual (kmeng01/rome PR #44), which can blow up the update's norm; MEMIT and
r-ROME fixed it the same way. The optimisation of ``delta`` and the closed form run in float32
(float64 for the solve) whatever the model's dtype: in half precision the reference's loss and
solve can overflow to NaN.

Functions here return new weights and never write into the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from remedi import errors, models
from remedi.methods import common, stats
from remedi.methods.base import MethodSetup, WeightEditor, layers_label

logger = logging.getLogger(__name__)


@dataclass
class RomeHparams(common.LocateEditHparams):
    """ROME's hyperparameters (names as in kmeng01/rome's ``hparams/ROME/*.json``)."""

    method_name: ClassVar[str] = "ROME"

    layer: int


@dataclass
class RankOneUpdate:
    """A ROME edit: ``delta = outer(right, left)`` added to the (out, in) weight."""

    weight_name: str
    key: torch.Tensor
    """The averaged key ``k`` (in,)."""
    value: torch.Tensor
    """The target MLP output ``v*`` (out,)."""
    left: torch.Tensor
    """``C^-1 k / (k^T C^-1 k)`` (in,)."""
    right: torch.Tensor
    """``v* - W k - b`` (out,)."""
    transposed: bool

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
        vectors = (self.key, self.value, self.left, self.right)
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
        templates: Random prefixes (``"{}"`` marks the prompt); default: sampled with
            :func:`~remedi.methods.common.context_templates` from ``hparams``.

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
        templates = common.context_templates(mt, hparams.context_template_lengths, hparams.seed)
    texts = [template.replace("{}", request.prompt) for template in templates]

    key = subject_keys(mt, hparams.layer, texts, request.subject).mean(dim=0)
    value = compute_value(mt, request, hparams, texts)

    module = mt.model.get_submodule(projection.module_path)
    with torch.no_grad():
        current = module(key.to(dtype=mt.dtype).unsqueeze(0)).squeeze(0).float()
    if hparams.mom2_adjustment:
        assert second_moment is not None
        moment = common.shrink_moment(second_moment.to(key.device), hparams.mom2_shrinkage)
        inverse_key = torch.linalg.solve(moment, key.double()).float()
    else:
        inverse_key = key.clone()
    left = inverse_key / torch.dot(inverse_key, key)
    right = value - current
    update = RankOneUpdate(projection.weight_name, key, value, left, right, projection.transposed)
    logger.info(
        "ROME at layer %d: |v* - Wk| %.3f, |delta W| %.3f",
        hparams.layer,
        right.norm().item(),
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
        self.templates = templates or common.context_templates(
            mt, hparams.context_template_lengths, hparams.seed
        )

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
