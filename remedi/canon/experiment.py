"""One experiment: evaluate the unedited model, train on the canonical examples, evaluate after
every epoch, and write ``result.json`` (the seed's ``ft_experiment.py`` + ``trainer.py``).

Each evaluation measures, as the seed does: the success rate on the task's evaluation set
(an example fails when its score is above the threshold), the NLL per token on the general
texts (``val100``) and on the task's unconditional texts (the targeted degradation set), and
the NLL per example on the hard negatives. Degradation is the increase of these losses over
the unedited model's (epoch 0). :meth:`ExperimentResult.selected` applies the seed's bound:
the last epoch whose general loss is at most ``(1 + bound)`` times the unedited one.

A finished experiment (``result.json`` with the same config) is never rerun; a running one
leaves ``status.json``, a failed one ``failed.json`` with its error (see :mod:`remedi.canon.sweep`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import env, errors, io, jobs, models
from remedi.canon import scoring
from remedi.canon.config import ExperimentConfig, config_from_dict
from remedi.canon.methods import method_hparams, one_shot_edit
from remedi.canon.remedi_method import remedi_trainable
from remedi.data import canonical
from remedi.methods import registry
from remedi.methods.base import write_weights
from remedi.methods.tuning import Trainable

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
STATUS_FILE = jobs.STATUS_FILE
FAILED_FILE = jobs.FAILED_FILE

SEED_BOUNDS = (1e-3, 1e-4, 1e-5)
"""The seed's degradation bounds ("leagues"): relative increase of the general loss."""


@dataclass
class EpochStats(DataClassJsonMixin):
    """One evaluation: after ``epoch`` epochs of training (0: the unedited model)."""

    epoch: int
    success: float
    general_loss: float
    targeted_loss: float
    hard_negative_loss: float
    train_loss: float | None = None


@dataclass
class ExperimentResult(DataClassJsonMixin):
    """Everything an experiment measured, with the config that produced it."""

    name: str
    task: str
    method: str
    split: str
    loss_type: str
    threshold: float
    config: dict[str, Any]
    epochs: list[EpochStats]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def initial(self) -> EpochStats:
        return self.epochs[0]

    def selected(self, bound: float) -> EpochStats:
        """The last epoch whose general loss is within ``(1 + bound)`` of the unedited one."""
        limit = self.initial.general_loss * (1 + bound)
        inside = [stats for stats in self.epochs if stats.general_loss <= limit]
        return inside[-1] if inside else self.initial

    def degradation(self, stats: EpochStats) -> dict[str, float]:
        """Increase of each loss over the unedited model (positive: worse)."""
        return {
            "general": stats.general_loss - self.initial.general_loss,
            "targeted": stats.targeted_loss - self.initial.targeted_loss,
            "hard_negative": stats.hard_negative_loss - self.initial.hard_negative_loss,
        }


def output_dir(config: ExperimentConfig) -> Path:
    """Where an experiment writes: ``output_dir``, else ``RESULTS/canon/<name>``."""
    if config.output_dir:
        return Path(config.output_dir)
    return env.results_dir() / "canon" / (config.name or "experiment")


def read_result(directory: Path) -> ExperimentResult | None:
    """The finished result in ``directory``, or None."""
    path = Path(directory) / RESULT_FILE
    if not path.is_file():
        return None
    return ExperimentResult.from_dict(io.read_json(path, "canonical-examples result"))


@dataclass
class TaskData:
    """The examples one experiment trains and evaluates on."""

    train: list[canonical.CanonicalExample]
    evaluation: list[canonical.CanonicalExample]
    hard_negative: list[canonical.CanonicalExample]
    unconditional: list[canonical.CanonicalExample]
    general: list[canonical.CanonicalExample]
    regularization: list[canonical.CanonicalExample]

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.__dataclass_fields__}


def load_task_data(config: ExperimentConfig) -> TaskData:
    """The task's files for the config's split, capped as the config's evaluation asks.

    The KL regulariser reads :func:`kl_texts` (none when its weight is 0).
    """
    task = canonical.canonical_task(config.task)
    root = Path(config.data_root) if config.data_root else canonical.canonical_root()
    split: canonical.Split = "test" if config.split == "test" else "val"
    limits = config.evaluation

    def first(rows: list[canonical.CanonicalExample], limit: int | None) -> list[Any]:
        return rows[:limit] if limit is not None else rows

    return TaskData(
        train=first(
            canonical.load_task_file(task, "train", split, root),
            config.training.max_train_examples,
        ),
        evaluation=first(
            canonical.load_task_file(task, "eval", split, root), limits.max_eval_examples
        ),
        hard_negative=first(
            canonical.load_task_file(task, "hard_negative", split, root),
            limits.max_hard_negatives,
        ),
        unconditional=first(
            canonical.load_task_file(task, "unconditional", split, root),
            limits.max_unconditional,
        ),
        general=canonical.load_general_texts(split, root, limits.max_general_texts),
        regularization=kl_texts(config, root) if config.regularization.kl_weight > 0 else [],
    )


def kl_texts(config: ExperimentConfig, root: Path) -> list[canonical.CanonicalExample]:
    """The general texts of the KL term: ``regularization.kl_texts``, else the task's."""
    spec = config.regularization.kl_texts or canonical.canonical_task(config.task).kl_texts
    if spec == canonical.KL_TEXTS_SHORT:
        return canonical.load_general_texts("short", root)
    from remedi import corpora  # datasets is slow to import; only regularised runs need it

    corpus = corpora.open_corpus(spec, config.model)
    texts = corpus.texts(corpus.size())
    if not texts:
        raise errors.FileFormatError(f"regularization.kl_texts {spec!r} holds no text")
    return [canonical.CanonicalExample("", text) for text in texts]


class Evaluator:
    """The seed's four measurements of the model in its current state."""

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        data: TaskData,
        loss_type: str,
        threshold: float,
        max_length: int,
        batch_size: int,
    ):
        self.mt, self.data = mt, data
        self.loss_type, self.threshold = loss_type, threshold
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, model: torch.nn.Module, epoch: int, train_loss: float | None) -> EpochStats:
        device = models.determine_device(self.mt.model)
        tokenizer, size, length = self.mt.tokenizer, self.batch_size, self.max_length
        was_training = model.training
        model.eval()
        scores = scoring.example_scores(
            model, tokenizer, self.data.evaluation, self.loss_type, length, device, size
        )
        stats = EpochStats(
            epoch=epoch,
            success=float((scores <= self.threshold).float().mean()) if len(scores) else math.nan,
            general_loss=scoring.mean_nll(
                model, tokenizer, self.data.general, length, device, size, per="token"
            ),
            targeted_loss=scoring.mean_nll(
                model, tokenizer, self.data.unconditional, length, device, size, per="token"
            ),
            hard_negative_loss=scoring.mean_nll(
                model, tokenizer, self.data.hard_negative, length, device, size, per="example"
            ),
            train_loss=train_loss,
        )
        model.train(was_training)
        return stats


def kl_to_reference(
    trainable: Trainable,
    mt: models.ModelAndTokenizer,
    texts: list[canonical.CanonicalExample],
    max_length: int,
) -> torch.Tensor:
    """KL(original || edited) of next-token distributions on ``texts``, summed over tokens and
    averaged over texts (the seed's ``batchmean``); padding is left out."""
    assert trainable.reference is not None
    device = models.determine_device(mt.model)
    rows = scoring.tokenize(mt.tokenizer, [""] * len(texts), [t.suffix for t in texts], max_length)
    length = max(len(ids) for ids in rows.token_ids)
    pad = mt.tokenizer.pad_token_id if mt.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(texts), length), pad, dtype=torch.long)
    attention = torch.zeros(len(texts), length, dtype=torch.long)
    for row, ids in enumerate(rows.token_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    with torch.no_grad(), trainable.reference() as reference:
        original = torch.log_softmax(
            reference(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1
        )
    edited = torch.log_softmax(
        trainable.model(input_ids=input_ids, attention_mask=attention).logits.float(), dim=-1
    )
    per_token = (original.exp() * (original - edited)).sum(dim=-1)
    return (per_token * attention).sum() / len(texts)


def make_optimizer(
    parameters: list[torch.nn.Parameter], kind: str, learning_rate: float
) -> torch.optim.Optimizer:
    """Adam with the seed's betas (0.9, 0.995; ``trainer.py:31``): torch's (``adam``) or
    bitsandbytes' 8-bit one (``adam8bit``, the seed's)."""
    betas = (0.9, 0.995)
    if kind == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate, betas=betas)
    if kind == "adam8bit":
        try:
            import bitsandbytes
        except ImportError as error:
            raise errors.UsageError(
                "training.optimizer adam8bit needs bitsandbytes (pip install bitsandbytes, on a "
                "CUDA machine); use optimizer adam otherwise"
            ) from error
        optimizer: torch.optim.Optimizer = bitsandbytes.optim.Adam(
            parameters, lr=learning_rate, betas=betas, optim_bits=8
        )
        return optimizer
    raise errors.UsageError(f"unknown optimizer {kind!r}; use adam or adam8bit")


def _write_status(directory: Path, state: str, **details: Any) -> None:
    jobs.write_status(directory, state, **details)


def run_experiment(config: ExperimentConfig, rerun: bool = False) -> ExperimentResult:
    """Train and evaluate as ``config`` says; skip (and return) a finished identical run.

    Raises:
        MismatchError: ``output_dir`` holds a finished result of another config.
    """
    directory = output_dir(config)
    existing = read_result(directory)
    if existing is not None and not rerun:
        # Read through today's schema, so keys added since (with defaults) still match.
        if result_config(existing).to_dict() != config.to_dict():
            raise errors.MismatchError(
                f"{directory} holds a finished experiment with another config; give this one "
                "another name or output_dir, or rerun it to replace the result"
            )
        logger.info("%s: finished before, not rerun", config.name)
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILED_FILE).unlink(missing_ok=True)
    _write_status(directory, "running")
    try:
        result = _train_and_evaluate(config)
    except KeyboardInterrupt:
        # Interrupted, not broken: the next run of the sweep starts it again.
        _write_status(directory, "interrupted")
        raise
    except Exception as error:
        io.write_json(
            directory / FAILED_FILE,
            {"error": f"{type(error).__name__}: {error}", "time": time.strftime("%H:%M:%S")},
        )
        _write_status(directory, "failed")
        raise
    io.write_json(directory / RESULT_FILE, result.to_dict())
    _write_status(directory, "done")
    return result


def _train_and_evaluate(config: ExperimentConfig) -> ExperimentResult:
    started = time.monotonic()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    task = canonical.canonical_task(config.task)
    loss_type = config.loss_type or task.loss_type
    threshold = config.threshold if config.threshold is not None else task.threshold
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = load_task_data(config)  # before the model: a bad file fails fast
    if not data.train:
        raise errors.FileFormatError(f"task {config.task} has no training examples")
    mt = models.load_model(
        config.model, device=device, dtype=config.dtype or "float32", random_init=config.random_init
    )
    max_length = scoring.model_max_length(mt.model, config.evaluation.max_length)
    settings = config.training
    regularization = config.regularization
    evaluate = Evaluator(mt, data, loss_type, threshold, max_length, config.evaluation.batch_size)

    def finish(epochs: list[EpochStats]) -> ExperimentResult:
        return ExperimentResult(
            name=config.name,
            task=config.task,
            method=config.method.name,
            split=config.split,
            loss_type=loss_type,
            threshold=threshold,
            config=config.to_dict(),
            epochs=epochs,
            counts=data.counts(),
            seconds=time.monotonic() - started,
        )

    spec = registry.method_spec(config.method.name)
    edits_states = spec.edits == "hidden_states"
    if spec.train is None and not edits_states:
        # One edit from all canonical examples: evaluated before and after ("epoch" 1).
        unedited = evaluate(mt.model, 0, None)
        new_weights = one_shot_edit(mt, data.train, config.method, loss_type)
        write_weights(mt.model, new_weights, config.method.name, keep_old=False)
        return finish([unedited, evaluate(mt.model, 1, None)])

    need_reference = regularization.kl_weight > 0
    if edits_states:
        trainable = remedi_trainable(mt, config.task, data.train, config.method, need_reference)
    else:
        assert spec.train is not None
        hparams = method_hparams(mt.name, config.method)
        trainable = spec.train(mt.model, hparams, need_reference)
    # Epoch 0 is the unedited LM (a state method's model may start with an edit applied).
    unedited_model = mt.model if edits_states else trainable.model
    epochs = [evaluate(unedited_model, 0, None)]
    logger.info("%s: unedited %s", config.name, epochs[0])
    if edits_states and settings.epochs == 0:
        # A given editor used as it is: one edit, evaluated as "epoch" 1 (as a one-shot edit).
        return finish([epochs[0], evaluate(trainable.model, 1, None)])
    optimizer = make_optimizer(trainable.parameters, settings.optimizer, settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs))
    start_values = (
        [p.detach().clone() for p in trainable.parameters] if regularization.l2_weight > 0 else []
    )
    order_rng = random.Random(config.seed)
    device_of = models.determine_device(mt.model)
    for epoch in range(1, settings.epochs + 1):
        order = list(range(len(data.train)))
        order_rng.shuffle(order)
        batches = [
            [data.train[i] for i in order[start : start + settings.batch_size]]
            for start in range(0, len(order), settings.batch_size)
        ]
        losses = []
        optimizer.zero_grad()
        for step, batch in enumerate(batches, start=1):
            loss = scoring.training_loss(
                trainable.model, mt.tokenizer, batch, loss_type, max_length, device_of
            )
            total = loss
            if regularization.kl_weight > 0:
                texts = order_rng.sample(
                    data.regularization, min(regularization.kl_batch_size, len(data.regularization))
                )
                total = total + regularization.kl_weight * kl_to_reference(
                    trainable, mt, texts, max_length
                )
            if regularization.l2_weight > 0:
                change = sum(
                    ((p - p0) ** 2).sum()
                    for p, p0 in zip(trainable.parameters, start_values, strict=True)
                )
                total = total + regularization.l2_weight * change
            (total / settings.grad_acc_steps).backward()
            if step % settings.grad_acc_steps == 0 or step == len(batches):
                optimizer.step()
                optimizer.zero_grad()
            losses.append(float(loss.detach()))
        scheduler.step()
        epochs.append(evaluate(trainable.model, epoch, sum(losses) / len(losses)))
        logger.info("%s: epoch %d %s", config.name, epoch, epochs[-1])
    return finish(epochs)


def result_config(result: ExperimentResult) -> ExperimentConfig:
    """The validated config a result was produced with. Regularised results written before
    ``regularization.kl_texts`` existed read ``val100-short.jsonl``, and say so (so that a run
    with today's default is not taken for them)."""
    data = dict(result.config)
    regularization = dict(data.get("regularization") or {})
    if "kl_texts" not in regularization and regularization.get("kl_weight", 0) > 0:
        regularization["kl_texts"] = canonical.KL_TEXTS_SHORT
        data["regularization"] = regularization
    return config_from_dict(data, f"result {result.name}")
