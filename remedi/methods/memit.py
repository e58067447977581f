"""MEMIT (Meng et al. 2023): many edits at once, spread over the MLPs of a range of layers.

For requests ``i = 1..n`` and layers ``l_1 < ... < l_L`` (``hparams.layers``):

1. ``z_i``: the residual stream after the LAST layer ``l_L`` at request ``i``'s subject's last token,
   optimised as ROME's ``v*`` (:func:`~remedi.methods.common.optimize_value`: Adam, KL term,
   weight decay, norm clamp) so that the model says ``target_new`` after the prompt behind
   random prefixes; computed once, on the unedited model.
2. For each layer ``l_j`` in order, on the model with the updates of ``l_1..l_{j-1}`` applied:
   the keys ``K`` (in, n) are the projection's inputs at the subject's last token, the mean of
   the bare prompt's key and of the prefixed prompts' mean key (MEMIT's ``compute_ks``, the same
   averaged key everywhere); the residuals ``R = (Z - H) / (L - j + 1)``, ``H`` the current
   residual stream after ``l_L`` in the bare prompts, share the remaining error evenly between
   this layer and those above it; and the update of the (out, in) weight is
   ``R K^T (lambda C + K K^T)^-1`` with ``C = E[k k^T]`` (:mod:`remedi.methods.stats`) and
   ``lambda = mom2_update_weight``, solved in float64.

One request at one layer is a ROME-like edit whose key covariance is ``lambda C + k k^T``.
Functions here return new weights and never write into the model; the intermediate layers'
updates are tried out by substituting tensors (:func:`~remedi.methods.common.substituted`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from remedi import corpora, errors, hooks, models
from remedi.methods import common, stats
from remedi.methods.base import MethodSetup, WeightEditor, layers_label

logger = logging.getLogger(__name__)


@dataclass
class MemitHparams(common.LocateEditHparams):
    """MEMIT's hyperparameters (names as in kmeng01/memit's ``hparams/MEMIT/*.json``)."""

    method_name: ClassVar[str] = "MEMIT"

    layers: list[int]
    v_num_grad_steps: int = field(default=25, kw_only=True)
    clamp_norm_factor: float = field(default=0.75, kw_only=True)
    mom2_update_weight: float = field(default=15000.0, kw_only=True)


@dataclass
class LayerUpdate:
    """One layer's MEMIT update: ``delta = residuals @ keys_adjusted^T`` of the (out, in) weight."""

    weight_name: str
    residuals: torch.Tensor
    """``R`` (out, n), float64."""
    adjusted_keys: torch.Tensor
    """``(lambda C + K K^T)^-1 K`` (in, n), float64."""
    transposed: bool

    def delta(self) -> torch.Tensor:
        """The update in the weight's own layout (transposed for GPT-2's Conv1D), float64."""
        out_in = self.residuals @ self.adjusted_keys.T
        return out_in.T if self.transposed else out_in

    def new_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight + delta`` in the weight's dtype and device (a new tensor), checked by
        :func:`~remedi.methods.common.cast_edited_weight` (half precision overflows or loses
        part of the update)."""
        delta = self.delta().to(weight.device)
        edited = weight.detach().double() + delta
        return common.cast_edited_weight(self.weight_name, weight, edited, "MEMIT")


@dataclass
class MemitUpdate:
    """A MEMIT edit of several requests: one update per layer, in layer order."""

    layers: list[LayerUpdate]
    targets: torch.Tensor
    """``Z``: the optimised residual stream after the last layer, (n, hidden), float32."""

    def new_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """New values of the edited weights of ``model`` (new tensors)."""
        return {
            update.weight_name: update.new_weight(model.get_parameter(update.weight_name))
            for update in self.layers
        }

    def nbytes(self) -> int:
        tensors = [self.targets]
        for update in self.layers:
            tensors += [update.residuals, update.adjusted_keys]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


KEYS_BATCH_SIZE = 32
"""Texts per forward pass when reading keys and hidden states."""


def averaged_keys(
    mt: models.ModelAndTokenizer,
    layer: int,
    requests: Sequence[common.EditRequest],
    templates: Sequence[str],
) -> torch.Tensor:
    """Each request's key at ``layer`` (n, in), float32: the mean of the bare prompt's key
    (``templates[0] == "{}"``) and of the mean key behind the other templates (the prefixes)."""
    if not templates or templates[0] != "{}":
        raise errors.UsageError('MEMIT\'s templates must start with the bare prompt "{}"')
    projection = models.determine_mlp_output(mt.model, layer)
    prefixes = len(templates) - 1
    texts = [template.replace("{}", r.prompt) for r in requests for template in templates]
    subjects = [r.subject for r in requests for _ in templates]
    keys = _at_subjects(mt, projection.module_path, texts, subjects, record_input=True)
    # The weights take the keys' dtype (float32), not torch's default, which may be float64.
    weights = torch.tensor([1.0] + [1.0 / prefixes] * prefixes if prefixes else [1.0])
    weights = weights.to(keys.dtype)
    weights = (weights / weights.sum()).to(keys.device)
    return torch.einsum("t,ntd->nd", weights, keys.view(len(requests), len(templates), -1))


def residual_stream(
    mt: models.ModelAndTokenizer, layer: int, requests: Sequence[common.EditRequest]
) -> torch.Tensor:
    """The hidden state after ``layer`` at each request's subject's last token in its bare
    prompt (n, hidden), float32."""
    (path,) = models.determine_layer_paths(mt.model, [layer])
    texts = [request.prompt for request in requests]
    return _at_subjects(mt, path, texts, [r.subject for r in requests], record_input=False)


@torch.no_grad()
def _at_subjects(
    mt: models.ModelAndTokenizer,
    module_path: str,
    texts: Sequence[str],
    subjects: Sequence[str],
    record_input: bool,
) -> torch.Tensor:
    """The input (or output) of module ``module_path`` at each text's subject's last token."""
    found: list[torch.Tensor] = []
    with hooks.trace(
        mt.model,
        {module_path: module_path},
        retain_input=record_input,
        retain_output=not record_input,
    ) as traced:
        for start in range(0, len(texts), KEYS_BATCH_SIZE):
            batch = common.edit_batch(
                mt.tokenizer,
                texts[start : start + KEYS_BATCH_SIZE],
                subjects[start : start + KEYS_BATCH_SIZE],
            ).to(mt.device)
            mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            kept = traced[module_path]
            value = kept.input if record_input else kept.output
            assert value is not None  # the module ran in the forward pass above
            rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
            found.append(value[rows, batch.subject_positions].float())
    return torch.cat(found)


def compute_update(
    mt: models.ModelAndTokenizer,
    requests: Sequence[common.EditRequest],
    hparams: MemitHparams,
    second_moments: Mapping[int, torch.Tensor] | None,
    templates: Sequence[str] | None = None,
) -> MemitUpdate:
    """The MEMIT update that writes all ``requests`` into the layers ``hparams.layers``.

    Args:
        second_moments: ``C = E[k k^T]`` of each layer's keys (by layer); required when
            ``hparams.mom2_adjustment`` (see :func:`load_second_moments`).
        templates: Random prefixes, ``"{}"`` first (the bare prompt); default: sampled with
            :func:`~remedi.methods.common.prefix_templates` from ``hparams``.

    Raises:
        errors.UsageError: No requests or layers, a layer out of range, or ``C`` missing.
        errors.MismatchError: A ``C`` of the wrong size.
        errors.SampleError: A target that cannot be split from its prompt's tokens.
    """
    if not requests:
        raise errors.UsageError("MEMIT needs at least one edit request")
    layers = sorted(hparams.layers)
    if not layers or len(set(layers)) != len(layers):
        raise errors.UsageError(f"MEMIT needs distinct layers to edit, got {hparams.layers}")
    common.check_layers(mt, layers)
    projections = {layer: models.determine_mlp_output(mt.model, layer) for layer in layers}
    moments: dict[int, torch.Tensor] = {}
    for layer, projection in projections.items():
        if not hparams.mom2_adjustment:
            moments[layer] = torch.eye(projection.in_features, dtype=torch.float64)
            continue
        if second_moments is None or layer not in second_moments:
            raise errors.UsageError(
                f"MEMIT with mom2_adjustment needs the key statistics C of layer {layer} "
                "(memit.load_second_moments)"
            )
        moment = second_moments[layer]
        if tuple(moment.shape) != (projection.in_features,) * 2:
            raise errors.MismatchError(
                f"key statistics of shape {tuple(moment.shape)} do not fit "
                f"{projection.module_path} ({projection.in_features} inputs)"
            )
        moments[layer] = moment
    for request in requests:  # Bad targets fail here, before any optimisation.
        common.target_token_ids(mt.tokenizer, request.prompt, request.target_new)
    if templates is None:
        templates = common.prefix_templates(mt, hparams)

    last_layer = layers[-1]
    (last_block,) = models.determine_layer_paths(mt.model, [last_layer])
    settings = hparams.value_optimization()
    targets = torch.stack(
        [
            common.optimize_value(
                mt,
                request,
                [t.replace("{}", request.prompt) for t in templates],
                last_block,
                settings,
            )
            for request in requests
        ]
    )

    updates: list[LayerUpdate] = []
    edited: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        projection = projections[layer]
        with common.substituted(mt.model, edited):
            keys = averaged_keys(mt, layer, requests, templates).double().T
            current = residual_stream(mt, last_layer, requests)
        residuals = (targets - current).double().T / (len(layers) - index)
        moment = common.shrink_moment(moments[layer].to(keys.device), hparams.mom2_shrinkage)
        adjusted_keys = torch.linalg.solve(
            hparams.mom2_update_weight * moment + keys @ keys.T, keys
        )
        update = LayerUpdate(
            projection.weight_name, residuals, adjusted_keys, projection.transposed
        )
        updates.append(update)
        edited[projection.weight_name] = update.new_weight(
            mt.model.get_parameter(projection.weight_name)
        )
        logger.info(
            "MEMIT at layer %d: %d requests, mean |z - h| %.3f, |delta W| %.3f",
            layer,
            len(requests),
            (targets - current).norm(dim=-1).mean().item(),
            update.delta().norm().item(),
        )
    return MemitUpdate(updates, targets)


def edit(
    mt: models.ModelAndTokenizer,
    requests: Sequence[common.EditRequest],
    hparams: MemitHparams,
    second_moments: Mapping[int, torch.Tensor] | None,
    templates: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """New values of the MLP output weights at ``hparams.layers`` that write all ``requests``.

    The model is not written; apply the result with :func:`~remedi.methods.base.write_weights`
    (which returns the old values to restore). See :func:`compute_update` for the arguments.
    """
    return compute_update(mt, requests, hparams, second_moments, templates).new_weights(mt.model)


def load_second_moments(
    mt: models.ModelAndTokenizer,
    hparams: MemitHparams,
    stats_dir: Path | None,
    corpus: corpora.Corpus | None = None,
    num_texts: int | None = None,
) -> dict[int, torch.Tensor]:
    """``C`` of each of ``hparams.layers`` (cached in ``stats_dir``, else computed for all the
    layers in one pass over ``corpus``, default the one ``hparams.stats_dataset`` names for this
    model, see :func:`remedi.corpora.open_corpus`); empty without ``mom2_adjustment``.

    Load them once, before editing: the cache is checked against the layer's current weight,
    so statistics are refused for a model whose edited layers were already written.
    """
    if not hparams.mom2_adjustment:
        return {}
    common.check_layers(mt, hparams.layers)
    computed = stats.second_moments(
        mt,
        hparams.layers,
        corpus or corpora.open_corpus(hparams.stats_dataset, mt.name),
        num_texts or hparams.stats_num_texts,
        cache_dir=stats_dir,
    )
    return {layer: computed[layer].moment for layer in hparams.layers}


class MemitEditor(WeightEditor):
    """MEMIT prepared for one model: its hyperparameters, each layer's key statistics and the
    random prefixes; it edits many requests at once."""

    name = "memit"
    batches = True

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        hparams: MemitHparams,
        second_moments: dict[int, torch.Tensor],
        templates: list[str] | None = None,
    ):
        self.hparams = hparams
        self.second_moments = second_moments
        self.label = layers_label("MEMIT", hparams.layers)
        self.templates = templates or common.prefix_templates(mt, hparams)

    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[common.EditRequest]
    ) -> MemitUpdate:
        self.check_requests(requests)
        return compute_update(mt, requests, self.hparams, self.second_moments, self.templates)


def prepare(mt: models.ModelAndTokenizer, hparams: MemitHparams, setup: MethodSetup) -> MemitEditor:
    """MEMIT for ``mt``: the key statistics of each of ``hparams.layers`` loaded from
    ``setup``'s cache or computed over its corpus (none without ``mom2_adjustment``).

    Raises:
        errors.UsageError: A layer is out of range.
    """
    common.check_layers(mt, hparams.layers)
    corpus = setup.statistics_corpus(mt, hparams.stats_dataset) if hparams.mom2_adjustment else None
    moments = load_second_moments(
        mt, hparams, setup.statistics_dir(), corpus=corpus, num_texts=setup.stats_num_texts
    )
    return MemitEditor(mt, hparams, moments)
