"""Training one editor: AdamW on the loss, the best validation state, early stopping."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import editors, hooks, models, precompute
from remedi.training.loss import (
    REFERENCE_BATCH_SIZE,
    LossWeights,
    _edit_ranges,
    _positions_mask,
    _prompt_inputs,
    editing_loss,
)

logger = logging.getLogger(__name__)


DEFAULT_BATCH_SIZE = REFERENCE_BATCH_SIZE
DEFAULT_MAX_EPOCHS = 20
DEFAULT_PATIENCE = 2
DEFAULT_LR = 1e-3


# ---------------------------------------------------------------------------------------
# Training one editor.


@dataclass
class TrainingConfig(DataClassJsonMixin):
    """How one editor is trained."""

    max_epochs: int = DEFAULT_MAX_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    patience: int = DEFAULT_PATIENCE
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class EpochLog(DataClassJsonMixin):
    epoch: int
    train_loss: float | None
    """Mean training loss over the epoch's batches (None for epoch 0, before any update)."""
    val_loss: float
    seconds: float


@dataclass
class TrainingLog(DataClassJsonMixin):
    """What happened while training one editor (saved as ``train_log.json``)."""

    editor_type: str
    layer: int
    config: TrainingConfig
    n_train: int
    n_val: int
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float | None = None
    stopped_early: bool = False
    val_efficacy: float | None = None
    """Share of validation samples with p(target_mediated) > p(target_unmediated) after the
    edit (first target token, last prompt token)."""
    val_efficacy_unedited: float | None = None


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Freeze and set ``model`` to eval mode inside; restore its flags afterwards."""
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
            parameter.requires_grad_(flag)
        model.train(was_training)


def _mean_loss(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    inputs: precompute.EditorInputs,
    config: TrainingConfig,
    desc: str,
) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tqdm(inputs.batches(config.batch_size), desc=desc, leave=False, disable=None):
            loss, _ = editing_loss(mt, editor, batch, config.weights)
            total += loss.item() * len(batch)
            count += len(batch)
    return total / max(count, 1)


def train_editor(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    train: precompute.EditorInputs,
    val: precompute.EditorInputs,
    config: TrainingConfig | None = None,
) -> TrainingLog:
    """Train ``editor`` in place on ``train``, early-stopping on ``val``; keep the best state.

    Baseline editors without trainable weights are only fitted (random) or left as they are
    (identity, null); their log holds the validation loss.
    """
    config = config or TrainingConfig()
    log = TrainingLog(
        editor_type=editor.config.editor_type,
        layer=editor.layer,
        config=config,
        n_train=len(train),
        n_val=len(val),
    )
    editor.to(models.determine_device(mt.model))
    with frozen(mt.model):
        if isinstance(editor, editors.RandomEditor):
            fit_random_editor(mt, editor, train, batch_size=config.batch_size)
        start = time.perf_counter()
        log.best_val_loss = _mean_loss(mt, editor, val, config, "validation (epoch 0)")
        log.epochs.append(EpochLog(0, None, log.best_val_loss, time.perf_counter() - start))
        if editor.trainable:
            _fit(mt, editor, train, val, config, log)
        log.val_efficacy, log.val_efficacy_unedited = efficacy(
            mt, editor, val, batch_size=config.batch_size
        )
    logger.info(
        "%s editor at layer %d: best validation loss %.4f (epoch %d), validation efficacy %s "
        "(unedited %s)",
        log.editor_type,
        log.layer,
        log.best_val_loss,
        log.best_epoch,
        log.val_efficacy,
        log.val_efficacy_unedited,
    )
    return log


def _fit(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    train: precompute.EditorInputs,
    val: precompute.EditorInputs,
    config: TrainingConfig,
    log: TrainingLog,
) -> None:
    optimizer = torch.optim.AdamW(editor.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    best_state = copy.deepcopy(editor.state_dict())
    epochs_without_improvement = 0
    for epoch in range(1, config.max_epochs + 1):
        start = time.perf_counter()
        editor.train()
        total, count = 0.0, 0
        progress = tqdm(
            train.batches(config.batch_size, generator=generator),
            total=-(-len(train) // config.batch_size),
            desc=f"{log.editor_type} layer {log.layer} epoch {epoch}/{config.max_epochs}",
            disable=None,
        )
        for batch in progress:
            optimizer.zero_grad(set_to_none=True)
            loss, _ = editing_loss(mt, editor, batch, config.weights)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
            progress.set_postfix(loss=f"{total / count:.4f}")
        editor.eval()
        val_loss = _mean_loss(mt, editor, val, config, f"validation (epoch {epoch})")
        log.epochs.append(
            EpochLog(epoch, total / max(count, 1), val_loss, time.perf_counter() - start)
        )
        logger.info(
            "epoch %d: train loss %.4f, validation loss %.4f", epoch, total / count, val_loss
        )
        if log.best_val_loss is None or val_loss < log.best_val_loss:
            log.best_val_loss, log.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(editor.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= config.patience:
                log.stopped_early = True
                break
    editor.load_state_dict(best_state)
    editor.eval()


@torch.no_grad()
def entity_deltas(
    mt: models.ModelAndTokenizer,
    inputs: precompute.EditorInputs,
    layer: int,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
) -> torch.Tensor:
    """How the entity's last-token hidden state at ``layer`` moves when the context is
    prepended to the prompt ("context. prompt" minus "prompt"), (n, hidden) float32."""
    deltas = []
    for batch in inputs.batches(batch_size):
        with_context = [
            f"{context.rstrip('. ')}. {prompt}"
            for context, prompt in zip(batch.contexts, batch.prompts, strict=True)
        ]
        states = []
        for prompts in (with_context, batch.prompts):
            encoded, offsets = precompute.tokenize(
                mt.tokenizer, prompts, models.determine_device(mt.model), padding_side="right"
            )
            spans = precompute.find_char_spans(prompts, batch.entities, batch.ids)
            ranges = precompute.token_ranges_from_char_spans(
                spans, offsets, encoded.attention_mask.cpu(), batch.ids
            )
            hidden = precompute.hiddens_at_layers(mt, encoded, [layer])[layer].float()
            rows = torch.arange(len(prompts), device=hidden.device)
            states.append(hidden[rows, ranges[:, 1].to(hidden.device) - 1])
        deltas.append((states[0] - states[1]).cpu())
    return torch.cat(deltas)


def fit_random_editor(
    mt: models.ModelAndTokenizer,
    editor: editors.RandomEditor,
    train: precompute.EditorInputs,
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE,
) -> None:
    """Fit the random editor's Gaussian to the entity deltas of the training samples."""
    deltas = entity_deltas(mt, train, editor.layer, batch_size)
    editor.set_distribution(deltas.to(editor.mean.device))


@torch.no_grad()
def efficacy(
    mt: models.ModelAndTokenizer,
    editor: editors.Editor,
    inputs: precompute.EditorInputs,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float | None, float | None]:
    """Share of samples where p(target_mediated) > p(target_unmediated) at the last prompt
    token (first target tokens), with the edit and without it. None without targets."""
    if len(inputs) == 0 or inputs.target_mediated_ids is None:
        return None, None
    if inputs.target_unmediated_ids is None:
        return None, None
    device = models.determine_device(mt.model)
    edited, unedited = [], []
    for batch in inputs.batches(batch_size):
        assert batch.target_mediated_ids is not None and batch.target_unmediated_ids is not None
        directions = editors.directions_from_inputs(editor, batch)
        encoded = _prompt_inputs(mt, batch.prompts)
        ranges = hooks.padded_token_ranges(_edit_ranges(editor, batch), encoded.attention_mask)
        rows = torch.arange(len(batch), device=device)
        last = _positions_mask(
            precompute.last_token_positions(encoded.attention_mask), encoded.input_ids.shape[1]
        )
        new = batch.target_mediated_ids.to(device)
        true = batch.target_unmediated_ids.to(device)
        with hooks.add_directions(mt.model, editor.layer, directions, ranges.to(device)):
            logits = models.logits_at(mt.model, encoded, last)
        edited.append(logits[rows, new] > logits[rows, true])
        logits = models.logits_at(mt.model, encoded, last)
        unedited.append(logits[rows, new] > logits[rows, true])
    return torch.cat(edited).float().mean().item(), torch.cat(unedited).float().mean().item()
