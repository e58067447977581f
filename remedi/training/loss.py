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

# The reference's KL settings (evandez/REMEDI @ fe16234, remedi/editors.py): lam_kl 10 (:36) at
# batch size 16 (:39). Its KL loop (:389-399) assigns each sample's KL to the running term
# instead of adding it, so the term that gets divided by the batch size (:399) and weighted by
# lam_kl (:400) is the batch's last sample's alone: lam_kl / B on one sample in B.
REFERENCE_LAM_KL = 10.0
REFERENCE_BATCH_SIZE = 16


def reference_equivalent_lam_kl(reference_lam_kl: float, batch_size: int) -> float:
    """Our ``lam_kl`` that weighs the KL term as the reference's ``reference_lam_kl`` does at
    ``batch_size``, in expectation over which sample is last in a batch.

    The reference's term is ``reference_lam_kl * KL_last / B``; ours is ``lam_kl * mean_b KL_b``
    (every sample counts). Both have expectation ``E[KL]`` times their weight when the last sample
    is as likely as any, so the weights agree at ``lam_kl = reference_lam_kl / B``
    (``benchmarks/bench_kl_weight.py`` measures it).
    """
    if batch_size < 1:
        raise errors.UsageError(f"batch size must be at least 1, got {batch_size}")
    return reference_lam_kl / batch_size


DEFAULT_LAM_KL = reference_equivalent_lam_kl(REFERENCE_LAM_KL, REFERENCE_BATCH_SIZE)
"""0.625: the reference's lam_kl 10 at its batch size 16, as our batch-mean KL term weighs it."""
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
    lam_rel: float | None = None
    """The relation term (not in REMEDI): KL at the end of prompts about the sample's entity
    under its other relations (``EditorInputs.relation_prompts``); off by default."""
    kl_direction: str = DEFAULT_KL_DIRECTION
    """Direction of the lam_kl, lam_ess and lam_rel terms: "original||edited" (the
    reference's) or "edited||original"."""

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


def length_groups(lengths: torch.Tensor, min_saving: float = 0.3) -> list[torch.Tensor]:
    """Row indices in one group, or two of similar lengths where that saves padding.

    Two groups (the shortest rows, the rest) are split where the fewest tokens are computed,
    and only when they compute at most ``1 - min_saving`` of one group's tokens: each group is a
    forward pass of its own, which reads the LM's weights and its LM head once more. (At batch
    16 on a CPU, one group measured about as fast as two split at a 10% saving.)
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


PREFIX_CACHE_FAMILIES = frozenset(
    {"gpt2", "gptj", "gpt_neo", "gpt_neox", "codegen", "gpt_bigcode", "falcon", "opt", "llama"}
    | {"mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "phi", "phi3", "olmo", "olmo2"}
    | {"starcoder2"}
)
"""Model types whose edited pass starts from a KV cache of the unedited pass (checked against
the plain loss in ``tests/test_train.py``). Others run both passes over the whole prompt:
bloom, mpt and gemma2 give NaN with the left padding that aligns the prompts."""


def _first_edited(
    mt: models.ModelAndTokenizer, editor: editors.Editor, batch: precompute.EditorInputs
) -> torch.Tensor:
    """Each row's first edited token: the edited pass starts there (at 0 outside
    :data:`PREFIX_CACHE_FAMILIES`)."""
    start = _edit_ranges(editor, batch)[:, 0]
    if getattr(mt.model.config, "model_type", None) not in PREFIX_CACHE_FAMILIES:
        return torch.zeros_like(start)
    return start


def _aligned_inputs(
    mt: models.ModelAndTokenizer, prompts: Sequence[str], first_edited: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Prompts padded so that each row's first edited token (``first_edited``, unpadded) falls
    in one column; the model inputs, and each row's shift (its number of left pads). Shifted
    rows get explicit position ids: each prompt keeps the positions it has alone."""
    ids = mt.tokenizer(list(prompts))["input_ids"]
    lengths = torch.tensor([len(row) for row in ids])
    shift = first_edited.max() - first_edited
    columns = torch.arange(int((shift + lengths).max()))
    real = (columns >= shift[:, None]) & (columns < (shift + lengths)[:, None])
    input_ids = torch.full(real.shape, mt.tokenizer.pad_token_id or 0)  # pads are masked out
    input_ids[real] = torch.tensor([token for row in ids for token in row])
    inputs = {"input_ids": input_ids, "attention_mask": real.long()}
    if shift.any():
        inputs["position_ids"] = (real.cumsum(dim=1) - 1).clamp(min=0)
    device = models.determine_device(mt.model)
    return {name: tensor.to(device) for name, tensor in inputs.items()}, shift


def _columns(inputs: dict[str, torch.Tensor], start: int, end: int) -> dict[str, torch.Tensor]:
    """The inputs of columns ``[start, end)``, after a KV cache of the columns before."""
    columns = {name: tensor[:, start:end] for name, tensor in inputs.items()}
    return {**columns, "attention_mask": inputs["attention_mask"][:, :end]}


def _cache_kwargs(model: torch.nn.Module, cache: transformers.DynamicCache | None) -> dict:
    """:func:`remedi.models.cache_kwargs` for ``cache``; none without a cache."""
    return {} if cache is None else models.cache_kwargs(model, cache)


def _group_log_probs(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    group: precompute.EditorInputs,
    directions: torch.Tensor,
    target_ids: torch.Tensor,
    kl_direction: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edited log-probabilities of ``target_ids[b, k]`` at the last prompt token of row
    ``b`` of ``group``, and the sum of the KL terms of ``group`` (zero without
    ``kl_direction``), from the entity's last token to the one before the prompt's last token,
    where the edit should leave the LM's predictions alone.

    Tokens before the first edited one are the same with and without the edit, so the prompts
    are aligned on that token: the unedited pass (no gradient) keeps the keys and values of the
    columns before it, and the edited pass, with its backward, runs only from there on.
    """
    model = mt.model
    edit_ranges = _edit_ranges(editor, group)
    first_edited = _first_edited(mt, editor, group)
    inputs, shift = _aligned_inputs(mt, group.prompts, first_edited)
    prefix = int(first_edited[0] + shift[0])  # the first edited column, the same in each row
    width = inputs["input_ids"].shape[1]
    device = inputs["input_ids"].device
    last = _positions_mask((shift + group.prompt_lengths - 1).to(device), width)
    kl_positions = torch.zeros_like(last)
    if kl_direction is not None:
        kl_ranges = torch.stack(
            [group.entity_token_ranges[:, 1] - 1, group.prompt_lengths - 1], dim=-1
        )
        kl_positions = hooks.token_range_mask((kl_ranges + shift[:, None]).to(device), width)
    # The LM head runs only where the loss reads; its rows come position by position.
    read = (last | kl_positions)[:, prefix:]
    read_row = read.flatten().cumsum(0).view_as(read) - 1

    # The unedited pass: log-probabilities at the KL positions, keys and values before `prefix`.
    kl_end = int((kl_positions.any(dim=0) * torch.arange(1, width + 1, device=device)).max())
    unedited_width = max(prefix, kl_end)
    cache = transformers.DynamicCache() if prefix > 0 else None
    logits_orig = None
    if unedited_width > 0:
        with torch.no_grad():
            logits_orig = models.logits_at(
                model,
                _columns(inputs, 0, unedited_width),
                kl_positions[:, :unedited_width],
                **_cache_kwargs(model, cache),
            )
    if cache is not None:
        cache.crop(prefix - cache.get_seq_length())  # negative: the number of columns to drop
    suffix_ranges = (edit_ranges + shift[:, None] - prefix).to(device)
    with hooks.add_directions(model, editor.layer, directions, suffix_ranges):
        logits_edit = models.logits_at(
            model,
            _columns(inputs, prefix, width),
            read,
            **_cache_kwargs(model, cache),
        )
    logp_edit = _log_probs(logits_edit)
    kl = torch.zeros((), device=device, dtype=logp_edit.dtype)
    if kl_direction is not None and logits_orig is not None and len(logits_orig) > 0:
        kl_rows = read_row[kl_positions[:, prefix:]]
        kl = edit_kl(logp_edit[kl_rows], _log_probs(logits_orig), kl_direction).sum()
    last_rows = read_row[last[:, prefix:]]
    return logp_edit[last_rows[:, None], target_ids.to(device)], kl


def editing_loss(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    batch: precompute.EditorInputs,
    weights: LossWeights | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The REMEDI loss of ``editor`` on a batch, and the value of each term (for logging).

    The LM head runs only where the loss reads the next-token distribution: at the last prompt
    token (the target terms) and at the KL positions. The edited pass (and its backward) runs
    only from the first edited token on (:func:`_group_log_probs`), and prompts whose edited
    parts differ much in length run in two groups (:func:`length_groups`): less padding, the
    same loss.
    """
    weights = weights or LossWeights()
    device = models.determine_device(mt.model)
    batch_size = len(batch)
    kl_direction = weights.kl_direction if weights.lam_kl is not None else None
    directions = editors.directions_from_inputs(editor, batch)

    # The token ids each target term reads at the last prompt token, a column each.
    targets: dict[str, torch.Tensor] = {}
    for name, weight, flag, article, ids in (
        ("mediated", weights.lam_m, "lam_m", "a", batch.target_mediated_ids),
        ("unmediated", weights.lam_u, "lam_u", "an", batch.target_unmediated_ids),
    ):
        if weight is None:
            continue
        if ids is None:
            raise errors.UsageError(
                f"{flag} is set but the samples have no target_{name}; pass "
                f"--{flag.replace('_', '-')} only for datasets with {article} {name} target"
            )
        targets[name] = ids
    target_ids = torch.zeros((batch_size, 0), dtype=torch.long)
    if targets:
        target_ids = torch.stack(list(targets.values()), dim=-1)

    # The edited pass runs from the first edited token on: group rows by that suffix's length.
    groups = length_groups(batch.prompt_lengths - _first_edited(mt, editor, batch))
    parts = [
        _group_log_probs(
            mt,
            editor,
            batch.select(rows),
            directions[rows.to(device)],
            target_ids[rows],
            kl_direction,
        )
        for rows in groups
    ]
    batch_order = torch.argsort(torch.cat(groups)).to(device)
    logp_targets = torch.cat([logp for logp, _ in parts])[batch_order]
    target_logps = dict(zip(targets, logp_targets.unbind(dim=-1), strict=True))

    loss = torch.zeros((), device=device, dtype=logp_targets.dtype)
    terms: dict[str, float] = {}
    if weights.lam_m is not None:
        term = -target_logps["mediated"].mean()
        loss = loss + weights.lam_m * term
        terms["mediated"] = term.item()
    if weights.lam_u is not None:
        term = -log1m_exp(target_logps["unmediated"]).mean()
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
    if weights.lam_rel is not None:
        term = relation_kl(mt, editor, batch, directions, weights.kl_direction)
        loss = loss + weights.lam_rel * term
        terms["relation"] = term.item()
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
    return _last_token_kl(mt, editor, directions, prompts, batch.entities, kl_direction).mean()


def _last_token_kl(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    directions: torch.Tensor,
    prompts: list[str],
    entities: list[str],
    kl_direction: str,
) -> torch.Tensor:
    """Per prompt, the KL of the next token at its end with its direction (one row of
    ``directions`` per prompt) added at its entity, edited against original (:func:`edit_kl`)."""
    with editors.apply_editor(
        mt, editor, directions, prompts, entities, padding_side="right"
    ) as inputs:
        last = _positions_mask(
            precompute.last_token_positions(inputs.attention_mask), inputs.input_ids.shape[1]
        )
        logits_edit = models.logits_at(mt.model, inputs, last)
    with torch.no_grad():
        logits_orig = models.logits_at(mt.model, inputs, last)
    return edit_kl(_log_probs(logits_edit), _log_probs(logits_orig), kl_direction)


def relation_kl(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    batch: precompute.EditorInputs,
    directions: torch.Tensor,
    kl_direction: str = DEFAULT_KL_DIRECTION,
) -> torch.Tensor:
    """The relation term: for each sample, the mean KL of the next token at the end of its
    prompts about the same entity under other relations (``batch.relation_prompts``), the
    sample's direction added at the entity as in its own prompt; the mean over the batch (a
    sample without such prompts counts 0). In ``kl_direction`` (see :func:`edit_kl`).

    It is zero when the edit leaves those predictions alone, whatever it does to the sample's
    own prompt: the entity's other facts held while the edited one moves.
    """
    if batch.relation_prompts is None:
        raise errors.UsageError(
            "lam_rel is set but the samples have no prompts about their entities' other "
            "relations; train on CounterFact-format data (counterfact, counterfact_easyedit, "
            "a toy world's export), which train_run fills them from, or drop --lam-rel"
        )
    rows = [row for row, prompts in enumerate(batch.relation_prompts) for _ in prompts]
    if not rows:
        return directions.sum() * 0  # keeps the graph: no sample has another relation
    prompts = [prompt for prompts in batch.relation_prompts for prompt in prompts]
    entities = [batch.entities[row] for row in rows]
    index = torch.tensor(rows, device=directions.device)
    kl = _last_token_kl(mt, editor, directions[index], prompts, entities, kl_direction)
    per_sample = torch.zeros(len(batch), device=kl.device, dtype=kl.dtype)
    counts = torch.zeros_like(per_sample)
    per_sample = per_sample.index_add(0, index.to(kl.device), kl)
    counts = counts.index_add(0, index.to(kl.device), torch.ones_like(kl))
    return (per_sample / counts.clamp(min=1)).mean()
