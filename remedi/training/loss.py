"""The REMEDI loss: the editing terms, the KL terms and their direction (see :mod:`remedi.training`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import transformers
from dataclasses_json import DataClassJsonMixin

from remedi import editors, errors, hooks, models, precompute

logger = logging.getLogger(__name__)


DEFAULT_LAM_M = 1.0
DEFAULT_LAM_U = 1.0
DEFAULT_LAM_KL = 10.0
ESSENCE_PROMPT = "{} is a"


# ---------------------------------------------------------------------------------------
# The loss.


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


KL_ORIGINAL_EDITED = "original||edited"
KL_EDITED_ORIGINAL = "edited||original"
KL_DIRECTIONS = (KL_ORIGINAL_EDITED, KL_EDITED_ORIGINAL)
DEFAULT_KL_DIRECTION = KL_ORIGINAL_EDITED
"""The reference's direction (``kl_div(log_edit, log_orig, log_target=True)``)."""


def check_kl_direction(direction: str) -> str:
    """Return ``direction`` if it is one of :data:`KL_DIRECTIONS`, else raise a ValueError."""
    if direction not in KL_DIRECTIONS:
        raise errors.UsageError(
            f"unknown KL direction {direction!r}; use {' or '.join(map(repr, KL_DIRECTIONS))} "
            "(--kl-direction)"
        )
    return direction


def edit_kl(logp_edit: torch.Tensor, logp_orig: torch.Tensor, direction: str) -> torch.Tensor:
    """KL between the edited and the original next-token distributions, in ``direction``:
    ``"original||edited"`` is KL(p_orig || p_edit), ``"edited||original"`` KL(p_edit || p_orig)."""
    if check_kl_direction(direction) == KL_ORIGINAL_EDITED:
        return kl_divergence(logp_orig, logp_edit)
    return kl_divergence(logp_edit, logp_orig)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in float32, or in the logits' dtype when it is wider (float64)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def log1m_exp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - p) from log p, accurate for p near 1 and finite at p = 1."""
    return torch.log((-torch.expm1(logp)).clamp(min=torch.finfo(logp.dtype).tiny))


@dataclass
class LossWeights(DataClassJsonMixin):
    """Weights of the loss terms; None turns a term off."""

    lam_m: float | None = DEFAULT_LAM_M
    lam_u: float | None = DEFAULT_LAM_U
    lam_kl: float | None = DEFAULT_LAM_KL
    lam_norm: float | None = None
    lam_ess: float | None = None
    kl_direction: str = DEFAULT_KL_DIRECTION
    """Direction of the lam_kl and lam_ess terms: "original||edited" (the reference's) or
    "edited||original"."""

    def __post_init__(self) -> None:
        check_kl_direction(self.kl_direction)


def _prompt_inputs(
    mt: models.ModelAndTokenizer, prompts: Sequence[str]
) -> transformers.BatchEncoding:
    inputs, _ = precompute.tokenize(
        mt.tokenizer, prompts, models.determine_device(mt.model), padding_side="right"
    )
    return inputs


def _edit_ranges(editor: editors.Editor, batch: precompute.EditorInputs) -> torch.Tensor:
    """Unpadded token ranges the direction is added to."""
    if editor.config.edit_last_entity_token:
        return precompute.last_token_ranges(batch.entity_token_ranges)
    return batch.entity_token_ranges


def _positions_mask(positions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean (batch, seq_len) mask with one ``True`` per row, at ``positions[row]``."""
    return torch.arange(seq_len, device=positions.device) == positions[:, None]


def length_groups(lengths: torch.Tensor, min_saving: float = 0.1) -> list[torch.Tensor]:
    """Row indices in one group, or two of similar lengths where that saves padding.

    Two groups (the shortest rows, the rest) are split where the fewest tokens are computed,
    and only when they compute at most ``1 - min_saving`` of one group's tokens: each group is a
    forward pass of its own.
    """
    order = lengths.argsort(stable=True)
    if len(order) < 2:
        return [order]
    sorted_lengths = lengths[order].tolist()
    count, longest = len(sorted_lengths), sorted_lengths[-1]

    def tokens(split: int) -> int:  # the first `split` rows form the first group
        return sorted_lengths[split - 1] * split + longest * (count - split)

    split = min(range(1, count + 1), key=tokens)
    if tokens(split) > (1 - min_saving) * longest * count:
        return [order]
    return [order[:split], order[split:]]


def _group_log_probs(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    group: precompute.EditorInputs,
    directions: torch.Tensor,
    kl_direction: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the edited next-token log-probabilities at the last prompt token
    (rows of ``group``), and the sum of the KL terms of ``group`` (zero without
    ``kl_direction``), from the entity's last token to the one before the prompt's last token,
    where the edit should leave the LM's predictions alone."""
    model = mt.model
    device = models.determine_device(model)
    inputs = _prompt_inputs(mt, group.prompts)
    attention_mask = inputs.attention_mask
    seq_len = attention_mask.shape[1]
    last = _positions_mask(precompute.last_token_positions(attention_mask), seq_len)
    kl_positions = torch.zeros_like(last)
    if kl_direction is not None:
        kl_ranges = torch.stack(
            [group.entity_token_ranges[:, 1] - 1, group.prompt_lengths - 1], dim=-1
        )
        kl_ranges = hooks.padded_token_ranges(kl_ranges, attention_mask.cpu()).to(device)
        kl_positions = hooks.token_range_mask(kl_ranges, seq_len)
    # The LM head runs only where the loss reads; its rows come position by position.
    read = last | kl_positions
    read_row = read.flatten().cumsum(0).view_as(read) - 1

    edit_ranges = hooks.padded_token_ranges(_edit_ranges(editor, group), attention_mask.cpu())
    with hooks.add_directions(model, editor.layer, directions, edit_ranges.to(device)):
        logp_edit = _log_probs(models.logits_at(model, inputs, read))
    kl = torch.zeros((), device=device, dtype=logp_edit.dtype)
    if kl_direction is not None:
        with torch.no_grad():
            logp_orig = _log_probs(models.logits_at(model, inputs, kl_positions))
        kl = edit_kl(logp_edit[read_row[kl_positions]], logp_orig, kl_direction).sum()
    return logp_edit[read_row[last]], kl


def editing_loss(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    batch: precompute.EditorInputs,
    weights: LossWeights | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The REMEDI loss of ``editor`` on a batch, and the value of each term (for logging).

    The LM head runs only where the loss reads the next-token distribution: at the last prompt
    token (the target terms) and at the KL positions. Prompts of very different lengths run in
    two forward passes (:func:`length_groups`): less padding, the same loss.
    """
    weights = weights or LossWeights()
    device = models.determine_device(mt.model)
    batch_size = len(batch)
    kl_direction = weights.kl_direction if weights.lam_kl is not None else None
    directions = editors.directions_from_inputs(editor, batch)

    groups = length_groups(batch.prompt_lengths)
    parts = [
        _group_log_probs(mt, editor, batch.select(rows), directions[rows.to(device)], kl_direction)
        for rows in groups
    ]
    batch_order = torch.argsort(torch.cat(groups)).to(device)
    logp_last = torch.cat([last for last, _ in parts])[batch_order]
    rows = torch.arange(batch_size, device=device)

    loss = torch.zeros((), device=device, dtype=logp_last.dtype)
    terms: dict[str, float] = {}
    if weights.lam_m is not None:
        if batch.target_mediated_ids is None:
            raise errors.UsageError(
                "lam_m is set but the samples have no target_mediated; pass --lam-m only for "
                "datasets with a mediated target"
            )
        logp_m = logp_last[rows, batch.target_mediated_ids.to(device)]
        term = -logp_m.mean()
        loss = loss + weights.lam_m * term
        terms["mediated"] = term.item()
    if weights.lam_u is not None:
        if batch.target_unmediated_ids is None:
            raise errors.UsageError(
                "lam_u is set but the samples have no target_unmediated; pass --lam-u only "
                "for datasets with an unmediated target"
            )
        logp_u = logp_last[rows, batch.target_unmediated_ids.to(device)]
        term = -log1m_exp(logp_u).mean()
        loss = loss + weights.lam_u * term
        terms["unmediated"] = term.item()
    if weights.lam_kl is not None:
        term = torch.stack([kl for _, kl in parts]).sum() / batch_size
        loss = loss + weights.lam_kl * term
        terms["kl"] = term.item()
    if weights.lam_norm is not None:
        term = directions.norm(dim=-1).mean()
        loss = loss + weights.lam_norm * term
        terms["norm"] = term.item()
    if weights.lam_ess is not None:
        term = _essence_kl(mt, editor, batch, directions, weights.kl_direction)
        loss = loss + weights.lam_ess * term
        terms["essence"] = term.item()
    terms["loss"] = loss.item()
    return loss, terms


def _essence_kl(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    batch: precompute.EditorInputs,
    directions: torch.Tensor,
    kl_direction: str = DEFAULT_KL_DIRECTION,
) -> torch.Tensor:
    """Mean KL of the next token after "{entity} is a", edited against original, in
    ``kl_direction`` (see :func:`edit_kl`)."""
    prompts = [ESSENCE_PROMPT.format(entity) for entity in batch.entities]
    with editors.apply_editor(
        mt, editor, directions, prompts, batch.entities, padding_side="right"
    ) as inputs:
        last = _positions_mask(
            precompute.last_token_positions(inputs.attention_mask), inputs.input_ids.shape[1]
        )
        logits_edit = models.logits_at(mt.model, inputs, last)
    with torch.no_grad():
        logits_orig = models.logits_at(mt.model, inputs, last)
    return edit_kl(_log_probs(logits_edit), _log_probs(logits_orig), kl_direction).mean()
