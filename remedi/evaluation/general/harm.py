"""What many edits do to a model: edit modes, checkpoints and general abilities (Gu et al. 2024).

Edits are applied under one of three modes:

- ``instance-sequential``: one edit after another on the same model;
- ``batch-single``: all N edits at once, from the unedited model, for each checkpoint N
  (only for methods that batch);
- ``batch-sequential``: fixed batches of ``batch_size`` edits one after another (edits
  ``[0, B)``, ``[B, 2B)``, ...); its checkpoints are multiples of ``B``, so that a checkpoint
  never cuts a batch (:func:`check_checkpoints`).

After each checkpoint N (0 = unedited) the run scores the edits made so far (efficacy: the new
target is the greedy continuation of the edit prompt; generalisation: of its rephrasings;
locality: the next token after unrelated prompts is the unedited model's; beside the first two,
EasyEdit's teacher-forced token accuracy, the edit success Gu et al. report,
:meth:`~remedi.evaluation.general.abilities.Scorer.token_accuracy`) and every general task, and
writes ``checkpoint_<N>.json``. The edited weights at each checkpoint are saved
beside it (``state_<N>.safetensors``), so that a resumed run never recomputes a finished
checkpoint (runs from before keep their ``state_<N>.pt``, read as tensors only).

Any registered method (:mod:`remedi.methods.registry`) that edits weights from requests or hidden
states can run. Weight-editing methods (:class:`~remedi.methods.base.WeightEditor`: ``rome``,
``ft``, ``ft5``, ``memit``, ...) write into the model through
:func:`~remedi.methods.base.write_weights`, optionally through RECT or one of
its baselines, random zeroing and PCA (:mod:`remedi.methods.rect`; ``random`` draws from a
generator seeded by the run's seed, the edit's index and the weight's name, so a resumed run
draws what an unbroken one would). A hidden-state method (REMEDI) edits no weight: every edited
entity's direction is added together wherever that entity is mentioned, in every prompt of
every task (an entity edited twice gets the sum of its directions). Its directions do not depend
on each other, so the three modes give the same model for REMEDI; they are accepted for
comparison.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, hooks, io, models
from remedi.data import general_tasks
from remedi.evaluation.general import abilities
from remedi.evaluation.methods import edit_request
from remedi.methods import common, rect, registry
from remedi.methods.base import DirectionEditor, MethodSetup, WeightEditor, write_weights

logger = logging.getLogger(__name__)

MODES = ("instance-sequential", "batch-single", "batch-sequential")
DEFAULT_CHECKPOINTS = (1, 10, 50, 100)
HARM_FORMAT_VERSION = 1
MAX_PROBES = 4
"""Rephrase and locality prompts scored per edit (the first ones)."""


@dataclass(frozen=True)
class HarmEdit:
    """One edit and its probes; ``sample`` (a context mediation sample) is what REMEDI reads."""

    request: common.EditRequest
    rephrase_prompts: tuple[str, ...]
    locality_prompts: tuple[str, ...]
    sample: Mapping[str, str] | None = None


@dataclass
class EditScores(DataClassJsonMixin):
    """Exact match (the whole target greedy) for efficacy and generalisation, and EasyEdit's
    teacher-forced token accuracy of the same prompts (None in results written before it)."""

    efficacy: float
    generalization: float
    locality: float
    efficacy_token_accuracy: float | None = None
    generalization_token_accuracy: float | None = None


@dataclass
class Checkpoint(DataClassJsonMixin):
    """Everything measured after ``num_edits`` edits."""

    num_edits: int
    method: str
    mode: str
    rect_share: float | None
    batch_size: int
    edits: EditScores | None
    tasks: list[abilities.TaskScore] = field(default_factory=list)
    format_version: int = HARM_FORMAT_VERSION
    regularizer: str = "rect"
    """Which regulariser ``rect_share`` is of (:data:`remedi.methods.rect.REGULARIZERS`); runs
    from before the baselines were RECT."""
    hparams_setting: str | None = None
    """The packaged hyperparameter setting of the method (e.g. ``gu2024``); None: its default
    file for the model."""


EditingMethod = WeightEditor | DirectionEditor
"""A prepared method (:func:`editing_method`): weights written, or directions added."""


def batching_methods() -> list[str]:
    """The registered methods that can run under ``batch-single``."""
    return [
        name
        for name in registry.names(prepared=True)
        if registry.METHODS[name].batches and registry.METHODS[name].edits != "text"
    ]


def check_mode(mode: str, method_name: str, method: EditingMethod) -> None:
    """Raise a one-line :class:`errors.UsageError` for an unknown mode or a method that cannot
    batch asked for ``batch-single``."""
    if mode not in MODES:
        raise errors.UsageError(f"unknown edit mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "batch-single" and isinstance(method, WeightEditor) and not method.batches:
        raise errors.UsageError(
            f"method {method_name!r} edits one fact at a time and cannot batch; use "
            "--mode instance-sequential or batch-sequential, or a method that batches "
            f"({', '.join(batching_methods())})"
        )


def check_checkpoints(mode: str, checkpoints: Sequence[int], batch_size: int) -> None:
    """Raise a one-line :class:`errors.UsageError` for a ``batch-sequential`` run whose batch
    size is not positive or whose checkpoints are not all multiples of it."""
    if mode != "batch-sequential":
        return
    if batch_size < 1:
        raise errors.UsageError(
            f"batch-sequential needs a batch size of 1 or more, got {batch_size}"
        )
    cutting = sorted(number for number in set(checkpoints) if number % batch_size)
    if cutting:
        raise errors.UsageError(
            f"batch-sequential edits fixed batches of {batch_size}; checkpoints {cutting} would "
            f"cut a batch: ask for multiples of {batch_size} (e.g. --edits "
            f"{','.join(map(str, batch_checkpoints(checkpoints, batch_size)))})"
        )


def batch_checkpoints(checkpoints: Sequence[int], batch_size: int) -> list[int]:
    """``checkpoints``, each rounded up to a multiple of ``batch_size``, sorted, once each."""
    return sorted({-(-number // batch_size) * batch_size for number in checkpoints})


def default_checkpoints(mode: str, batch_size: int) -> list[int]:
    """:data:`DEFAULT_CHECKPOINTS`; under ``batch-sequential`` rounded up to multiples of
    ``batch_size`` (1, 10, 50, 100 become 10, 50, 100 for batches of 10)."""
    if mode == "batch-sequential" and batch_size >= 1:
        return batch_checkpoints(DEFAULT_CHECKPOINTS, batch_size)
    return list(DEFAULT_CHECKPOINTS)


# ---------------------------------------------------------------------------------------------
# REMEDI's directions for every edited entity at once.


def mention_positions(
    text: str, entity: str, offsets: torch.Tensor, attention_mask: torch.Tensor, last_token: bool
) -> list[int]:
    """Token positions of ``entity``'s last mention in ``text`` (its last token only, or all
    its tokens), from one row's offsets; empty if not mentioned."""
    start = text.rfind(entity)
    if start < 0:
        return []
    end = start + len(entity)
    valid = attention_mask.bool() & offsets[:, 1].gt(offsets[:, 0])
    inside = valid & offsets[:, 0].lt(end) & offsets[:, 1].gt(start)
    positions = inside.nonzero().flatten().tolist()
    return positions[-1:] if last_token else positions


@contextlib.contextmanager
def entity_directions(
    mt: models.ModelAndTokenizer,
    layer: int,
    directions: Mapping[str, torch.Tensor],
    texts: Sequence[str],
    offsets: torch.Tensor,
    attention_mask: torch.Tensor,
    alpha: float = 1.0,
    last_token: bool = True,
) -> Iterator[None]:
    """Add ``alpha * directions[entity]`` at every edited entity's mention in each text (the
    output of decoder block ``layer``), on the full-sequence pass; later one-token generation
    steps are past the prompt and left alone. The hook is removed even if the body raises."""
    batch, length = attention_mask.shape
    hidden_size = models.determine_hidden_size(mt.model)
    additions = torch.zeros(batch, length, hidden_size)
    touched = False
    for row, text in enumerate(texts):
        for entity, direction in directions.items():
            for position in mention_positions(
                text, entity, offsets[row], attention_mask[row], last_token
            ):
                additions[row, position] += direction.float().cpu()
                touched = True
    if not touched:
        yield
        return
    additions = (alpha * additions).to(mt.device, mt.dtype)
    block = models.resolve_layer(mt.model, layer)

    def add(key: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if hidden.shape[:2] != (batch, length):
            return None
        return hidden + additions

    with hooks.trace(mt.model, {layer: block}, edit_output=add):
        yield


# ---------------------------------------------------------------------------------------------
# Scoring the edits themselves.


def next_token_ids(scorer: abilities.Scorer, prompts: Sequence[str]) -> list[int]:
    """The greedy next token after each prompt (under the scorer's intervention)."""
    mt = scorer.mt
    results = [0] * len(prompts)
    for start in range(0, len(prompts), scorer.batch_size):
        chunk = list(prompts[start : start + scorer.batch_size])
        encoded = mt.tokenizer(
            chunk, return_tensors="pt", padding=True, return_offsets_mapping=True
        )
        mask = encoded["attention_mask"]
        last = mask.sum(-1) - 1
        positions = torch.zeros_like(mask, dtype=torch.bool)
        positions[torch.arange(len(chunk)), last] = True
        inputs = {
            "input_ids": encoded["input_ids"].to(mt.device),
            "attention_mask": mask.to(mt.device),
        }
        with torch.no_grad(), scorer.intervention(chunk, encoded["offset_mapping"], mask):
            logits = models.logits_at(mt.model, inputs, positions)
        for offset, token in enumerate(logits.argmax(-1).tolist()):
            results[start + offset] = token
    return results


def score_edits(
    scorer: abilities.Scorer, edits: Sequence[HarmEdit], unedited_next: Mapping[str, int]
) -> EditScores:
    """Efficacy, generalisation and locality of ``edits`` on the scorer's (edited) model."""
    prompts = [edit.request.prompt for edit in edits]
    targets = [" " + edit.request.target_new.strip() for edit in edits]
    efficacy = scorer.continuations(prompts, targets).is_greedy
    rephrase_prompts = [p for edit in edits for p in edit.rephrase_prompts[:MAX_PROBES]]
    rephrase_targets = [
        " " + edit.request.target_new.strip()
        for edit in edits
        for _ in edit.rephrase_prompts[:MAX_PROBES]
    ]
    generalization = scorer.continuations(rephrase_prompts, rephrase_targets).is_greedy
    locality_prompts = [p for edit in edits for p in edit.locality_prompts[:MAX_PROBES]]
    now = next_token_ids(scorer, locality_prompts)
    unchanged = [token == unedited_next[p] for p, token in zip(locality_prompts, now, strict=True)]
    return EditScores(
        _mean(efficacy),
        _mean(generalization),
        _mean(unchanged),
        _mean(scorer.token_accuracy(prompts, targets)),
        _mean(scorer.token_accuracy(rephrase_prompts, rephrase_targets)),
    )


def _mean(values: Sequence[float]) -> float:
    """The mean of the values that are numbers (a target without tokens of its own is NaN in
    EasyEdit's token accuracy, and skipped as EasyEdit skips it); NaN if none."""
    numbers = [float(value) for value in values if not math.isnan(value)]
    return sum(numbers) / len(numbers) if numbers else float("nan")


# ---------------------------------------------------------------------------------------------
# General tasks: the paper's eight (both protocols) and the toy world's three.

TaskItems = dict[str, Sequence[Any]]


def score_toy_task(
    scorer: abilities.Scorer, task: str, items: Sequence[Any]
) -> abilities.TaskScore:
    """The toy tasks (see :mod:`remedi.toy.general`), scored by log-likelihood."""
    if task == "toy_recall":
        result = scorer.continuations(
            [item.question for item in items], [" " + item.answers[0] for item in items]
        )
        return abilities.TaskScore(
            task, "loglik", "greedy_match", _mean(result.is_greedy), len(items)
        )
    if task == "toy_entailment":
        # Predicted entailment iff the stated value is the LM's most likely value of the
        # relation (the hypotheses' values) after the premise and the hypothesis' stem.
        values = sorted({_value_of(item) for item in items})
        contexts = [
            f"{item.premise} {item.hypothesis.rstrip('.').rpartition(' ')[0]}" for item in items
        ]
        chosen = scorer.choose(contexts, [[f" {value}" for value in values]] * len(items))
        correct = sum(
            (values[choice] == _value_of(item)) == item.entailment
            for choice, item in zip(chosen, items, strict=True)
        )
        return abilities.TaskScore(task, "loglik", "accuracy", correct / len(items), len(items))
    if task == "toy_text":
        result = scorer.continuations(
            [item.dialogue for item in items], [" " + item.summary for item in items]
        )
        mean = sum(result.log_prob) / max(sum(result.num_tokens), 1)
        details = {"perplexity": float(torch.tensor(-mean).exp())}
        return abilities.TaskScore(task, "loglik", "token_logprob", mean, len(items), details)
    raise errors.UsageError(f"unknown toy task {task!r}")


def _value_of(item: general_tasks.NliItem) -> str:
    return item.hypothesis.rstrip(".").rpartition(" ")[2]


def score_tasks(
    scorer: abilities.Scorer, task_items: TaskItems, protocols: Sequence[str]
) -> list[abilities.TaskScore]:
    """Every task under every protocol (the toy tasks under their own)."""
    scores = []
    for task, items in task_items.items():
        if task.startswith("toy_"):
            scores.append(score_toy_task(scorer, task, items))
            continue
        for protocol in protocols:
            scores.append(abilities.evaluate_task(scorer, task, items, protocol))
    return scores


# ---------------------------------------------------------------------------------------------
# The run.


@dataclass
class HarmSettings:
    method: str
    mode: str
    checkpoints: list[int]
    batch_size: int = 10
    rect_share: float | None = None
    """The share of each update a regulariser keeps; None: updates are written whole."""
    protocols: tuple[str, ...] = abilities.PROTOCOLS
    score_batch_size: int = abilities.DEFAULT_BATCH_SIZE
    regularizer: str = "rect"
    """RECT or a baseline (:data:`remedi.methods.rect.REGULARIZERS`), at ``rect_share``."""
    seed: int = 0
    """Seeds the ``random`` regulariser's draws."""
    hparams_setting: str | None = None
    """Recorded in every checkpoint: which packaged hyperparameters the method was prepared with."""


STATE_FILE = "state_{}.safetensors"
OLD_STATE_FILE = "state_{}.pt"
"""Where runs before safetensors kept a checkpoint's weights (read as tensors only)."""


def save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write a checkpoint's edited weights (by parameter name) as safetensors, atomically."""
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in state.items()}
    io.write_safetensors(path, tensors, metadata={"format": "pt"})


def load_state(output_dir: Path, number: int) -> dict[str, torch.Tensor] | None:
    """The edited weights saved at checkpoint ``number``, or None if none are saved.

    A run from before safetensors has ``state_<N>.pt``: it is read with ``weights_only``
    (tensors only, no code), which refuses anything but a dict of tensors with a clear error.
    """
    path = Path(output_dir) / STATE_FILE.format(number)
    if path.is_file():
        return dict(safetensors.torch.load_file(str(path)))
    old = Path(output_dir) / OLD_STATE_FILE.format(number)
    if not old.is_file():
        return None
    try:
        state = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as error:
        raise errors.FileFormatError(
            f"{old} is not a dict of tensors ({type(error).__name__}: {error}); delete it and "
            f"checkpoint_{number}.json to recompute that checkpoint"
        ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise errors.FileFormatError(
            f"{old} is not a dict of tensors; delete it and checkpoint_{number}.json to "
            "recompute that checkpoint"
        )
    return state


def run_harm(
    mt: models.ModelAndTokenizer,
    method: EditingMethod,
    edits: Sequence[HarmEdit],
    task_items: TaskItems,
    settings: HarmSettings,
    output_dir: Path,
) -> list[Checkpoint]:
    """Run the edit sequence and write ``checkpoint_<N>.json`` after each checkpoint.

    A finished checkpoint is read back, not recomputed; the weights of the last finished one
    are restored from ``state_<N>.safetensors`` before going on. The model's weights are
    restored to their unedited values before returning, also on error.
    """
    check_mode(settings.mode, settings.method, method)
    check_checkpoints(settings.mode, settings.checkpoints, settings.batch_size)
    checkpoints = sorted({0, *settings.checkpoints})
    if checkpoints[-1] > len(edits):
        raise errors.UsageError(
            f"asked for {checkpoints[-1]} edits but only {len(edits)} edits are available; "
            "lower --edits or use a larger edit source"
        )
    rect.regularizer(settings.regularizer)  # an unknown name fails before any edit
    if settings.rect_share is not None and not isinstance(method, WeightEditor):
        raise errors.UsageError(
            f"{rect.LABELS[settings.regularizer]} regularises weight updates; "
            f"{settings.method} edits no weight"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    locality_prompts = sorted({p for edit in edits for p in edit.locality_prompts[:MAX_PROBES]})
    unedited = dict(
        zip(locality_prompts, next_token_ids(abilities.Scorer(mt), locality_prompts), strict=True)
    )
    edited_names: set[str] = set()
    originals: dict[str, torch.Tensor] = {}
    results: list[Checkpoint] = []
    done = 0
    try:
        for number in checkpoints:
            path = output_dir / f"checkpoint_{number}.json"
            saved = load_state(output_dir, number) if number > 0 and path.is_file() else None
            if path.is_file() and (number == 0 or saved is not None):
                results.append(Checkpoint.from_dict(io.read_json(path, "harm checkpoint")))
                if isinstance(method, WeightEditor) and saved is not None:
                    for name in saved:
                        originals.setdefault(name, mt.model.get_parameter(name).detach().clone())
                    write_weights(mt.model, saved, f"checkpoint {number}", keep_old=False)
                    edited_names.update(saved)
                done = number
                logger.info("checkpoint %d already done: %s", number, path)
                continue
            intervention = None
            if isinstance(method, WeightEditor):
                requests = [edit.request for edit in edits]
                if settings.mode == "batch-single":
                    write_weights(mt.model, originals, "the unedited weights", keep_old=False)
                    starts = [0] if number else []
                    step = number
                elif settings.mode == "batch-sequential":
                    # Fixed batches [kB, (k+1)B): done and number are multiples of B.
                    step = settings.batch_size
                    starts = list(range(done, number, step))
                else:
                    step = 1
                    starts = list(range(done, number))
                for first in starts:
                    batch = requests[first : min(first + step, number)]
                    _track(mt, method, batch, first, originals, edited_names, settings)
                state = {name: mt.model.get_parameter(name) for name in sorted(edited_names)}
                save_state(output_dir / STATE_FILE.format(number), state)
            else:
                intervention = _direction_intervention(mt, method, edits[:number])
            scorer = abilities.Scorer(mt, settings.score_batch_size, intervention)
            logger.info("checkpoint %d: scoring", number)
            edit_scores = score_edits(scorer, edits[:number], unedited) if number else None
            checkpoint = Checkpoint(
                num_edits=number,
                method=settings.method,
                mode=settings.mode,
                rect_share=settings.rect_share,
                batch_size=settings.batch_size,
                edits=edit_scores,
                tasks=score_tasks(scorer, task_items, settings.protocols),
                regularizer=settings.regularizer,
                hparams_setting=settings.hparams_setting,
            )
            io.write_json(path, checkpoint.to_dict())
            results.append(checkpoint)
            done = number
    finally:
        write_weights(mt.model, originals, "the unedited weights", keep_old=False)
    return results


def _track(
    mt: models.ModelAndTokenizer,
    method: WeightEditor,
    requests: Sequence[common.EditRequest],
    first: int,
    originals: dict[str, torch.Tensor],
    edited_names: set[str],
    settings: HarmSettings,
) -> None:
    """Apply ``requests`` (edits ``first``, ``first + 1``, ... of the run), keeping each touched
    weight's unedited value first; each update goes through the regulariser if one is set."""
    if method.batches:
        groups = [(first, list(requests))]
    else:
        groups = [(first + offset, [request]) for offset, request in enumerate(requests)]
    for index, group in groups:
        new = method.new_weights(mt, group)
        for name in new:
            originals.setdefault(name, mt.model.get_parameter(name).detach().clone())
        if settings.rect_share is not None:
            old = {name: mt.model.get_parameter(name).detach() for name in new}
            new = rect.regularize_weights(
                old, new, settings.rect_share, settings.regularizer, settings.seed, draw=index
            )
        write_weights(mt.model, new, method.name, keep_old=False)
        edited_names.update(new)


def _direction_intervention(
    mt: models.ModelAndTokenizer, method: DirectionEditor, edits: Sequence[HarmEdit]
) -> abilities.Intervention | None:
    if not edits:
        return None
    samples = [edit.sample for edit in edits]
    if any(sample is None for sample in samples):
        raise errors.UsageError(
            f"{method.label} needs context mediation samples for its edits; use CounterFact "
            "edits (--edit-source counterfact)"
        )
    rows = method.directions(mt, [sample for sample in samples if sample is not None])
    directions: dict[str, torch.Tensor] = {}
    for edit, row in zip(edits, rows, strict=True):
        subject = edit.request.subject
        directions[subject] = directions.get(subject, torch.zeros_like(row)) + row

    def intervene(
        texts: Sequence[str], offsets: torch.Tensor, attention_mask: torch.Tensor
    ) -> contextlib.AbstractContextManager[None]:
        return entity_directions(
            mt,
            method.layer,
            directions,
            texts,
            offsets,
            attention_mask,
            method.alpha,
            method.last_token,
        )

    return intervene


# ---------------------------------------------------------------------------------------------
# Building a run from names: edit sources, methods, tasks.


def counterfact_edits(cases: Sequence[Any]) -> list[HarmEdit]:
    """Edits from CounterFact cases (:class:`~remedi.evaluation.cases.EvalCase`): ROME's
    rewrite prompt, paraphrases as rephrasings, neighborhood prompts for locality."""
    return [
        HarmEdit(
            edit_request(case),
            tuple(case.paraphrase_prompts),
            tuple(case.neighborhood_prompts),
            case.sample(),
        )
        for case in cases
    ]


def zsre_edits(records: Sequence[Any]) -> list[HarmEdit]:
    """Edits from zsRE records (:class:`remedi.data.zsre.ZsreEdit`); REMEDI cannot read them
    (no context mediation sample), the weight methods can."""
    return [
        HarmEdit(
            common.EditRequest(
                record.prompt, record.subject, record.target_new, record.target_true
            ),
            (record.rephrase_prompt,),
            (record.locality_prompt,),
        )
        for record in records
    ]


def editing_method(
    name: str,
    mt: models.ModelAndTokenizer,
    setup: MethodSetup | None = None,
    setting: str | None = None,
    **options: Any,
) -> EditingMethod:
    """Registered method ``name`` prepared for ``mt`` (its packaged hyperparameters, of the named
    ``setting`` if given, e.g. ROME's ``gu2024``; ``options`` override them by name, e.g.
    ``editors_dir`` for ``remedi``).

    Raises:
        errors.UsageError: The method rewrites text or is trained, which this suite cannot run.
    """
    spec = registry.method_spec(name)
    if spec.prepare is None:
        why = "rewrites text" if spec.edits == "text" else "is trained on a suite's loss"
        raise errors.UsageError(
            f"method {name!r} {why} and cannot run under edit modes; use one of "
            f"{', '.join(harm_methods())}"
        )
    return registry.prepare(name, mt, setup, setting=setting, **options)


def harm_methods() -> list[str]:
    """The registered methods this suite runs: those prepared for a model (weights or hidden
    states)."""
    return [
        name for name in registry.names(prepared=True) if registry.METHODS[name].edits != "text"
    ]


def load_task_items(tasks: Sequence[str], task_dir: Path, limit: int | None) -> TaskItems:
    """Items of each task (``toy_*`` read from the toy files, the others from the paper's
    ``task-data``), the first ``limit`` of each."""
    from remedi.toy.general import TOY_TASK_FILES

    items: TaskItems = {}
    for task in tasks:
        if task in TOY_TASK_FILES:
            loaders: dict[str, Callable[[Path], Sequence[Any]]] = {
                "toy_recall": general_tasks.load_open_qa,
                "toy_entailment": general_tasks.load_nli,
                "toy_text": general_tasks.load_summarization,
            }
            loaded = loaders[task](Path(task_dir) / TOY_TASK_FILES[task])
        else:
            loaded = general_tasks.load_task(task, task_dir)
        items[task] = loaded[:limit] if limit is not None else loaded
    return items


def lm_eval_scores(mt: models.ModelAndTokenizer, tasks: Sequence[str]) -> dict[str, Any]:
    """Run lm-evaluation-harness ``tasks`` on the (edited) model in memory.

    Weight edits are in the model and are seen; REMEDI's directions are not (lm-eval runs its
    own forward passes). Raises a one-line :class:`errors.UsageError` when ``lm_eval`` is not
    installed or cannot load a task's data (offline: its datasets come from the Hugging Face
    hub).
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise errors.UsageError(
            "--lm-eval-tasks needs lm-evaluation-harness (pip install lm-eval), which is not "
            "installed here; drop the option or install it on a machine with network"
        ) from error
    try:
        wrapped = HFLM(pretrained=mt.model, tokenizer=mt.tokenizer)
        output = lm_eval.simple_evaluate(model=wrapped, tasks=list(tasks))
    except (OSError, ConnectionError, ValueError) as error:
        raise errors.UsageError(
            f"lm-eval could not run {', '.join(tasks)} ({type(error).__name__}: {error}); its "
            "datasets are downloaded from the Hugging Face hub, which needs network"
        ) from error
    results: dict[str, Any] = output.get("results", {}) if output else {}
    return results
