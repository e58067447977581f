"""What every weight-editing method shares: the edit request, its tokens, MLP hooks (on
:func:`remedi.hooks.trace`), and the hyperparameters ROME and MEMIT have in common.

A request is text: a prompt that mentions the subject, and the new target. Token ids are built
once from the text and never re-joined into strings: the target's ids are those the tokenizer
gives ``prompt + " " + target`` after the prompt's characters (no BOS, no changed first token), and
every training sequence is ``tokens(prefix + prompt) + target_ids[:-1]`` as ids.
"""

from __future__ import annotations

import contextlib
import logging
import random
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import transformers
from dataclasses_json import DataClassJsonMixin

from remedi import errors, hooks, io, models, precompute

logger = logging.getLogger(__name__)

Tokenizer = transformers.PreTrainedTokenizerBase

CONTEXT_TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")
"""The words MEMIT's random prefixes start with (kmeng01/memit ``memit/memit_main.py:300``; also
EasyEdit's ROME, ``easyeditor/models/rome/rome_main.py:214``), each sampled on by the model."""

PREFIX_SOURCES = ("eos", "start_words")
"""Where random prefixes are sampled from: ``"eos"``, the model's end-of-text token (kmeng01/rome
``rome/rome_main.py:165``), or ``"start_words"``, :data:`CONTEXT_TEMPLATE_STARTS` (MEMIT's)."""

PREFIX_TOP_K = 5
"""The prefixes are sampled from the model's five most likely next tokens (kmeng01/rome
``util/generate.py:82``, ``generate_fast``'s default, which both references use)."""


HparamsT = TypeVar("HparamsT", bound="LocateEditHparams")


@dataclass(kw_only=True)
class LocateEditHparams(DataClassJsonMixin):
    """The hyperparameters ROME and MEMIT share (names as in kmeng01/rome's and kmeng01/memit's
    ``hparams/*/*.json``): the ``v*`` optimisation, the key statistics, the context templates.
    Each method adds its layer(s) and overrides the defaults that differ (ROME's here)."""

    method_name: ClassVar[str] = "editing"
    """Names the method in errors."""

    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_stop_loss: float = 5e-2
    """The v* optimisation stops below this loss (the reference's fixed 0.05)."""
    mom2_adjustment: bool = True
    """False: ``C = I`` (no statistics needed)."""
    mom2_shrinkage: float = 0.0
    """Shrink ``C`` towards ``(tr C / d) I`` by this fraction (:func:`shrink_moment`); 0 is the
    papers' ``C``."""
    context_template_lengths: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    """``[length, count]`` pairs of random prefixes: ``count`` prefixes of ``length`` tokens,
    the start included (MEMIT's default here: five of 10, kmeng01/memit
    ``memit/memit_main.py:305``; ROME overrides it with ``[[5, 10], [10, 10]]``)."""
    prefix_source: str = "start_words"
    """Where the prefixes are sampled from (:data:`PREFIX_SOURCES`; see
    :func:`context_templates`): MEMIT's start words here, ROME's end-of-text token in ROME."""
    kl_prompts: list[str] = field(default_factory=lambda: ["{} is a"])
    stats_dataset: str = "wikipedia:20200501.en"
    stats_num_texts: int = 100000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prefix_source not in PREFIX_SOURCES:
            raise errors.UsageError(
                f"{self.method_name}'s prefix_source must be one of {', '.join(PREFIX_SOURCES)}, "
                f"got {self.prefix_source!r}"
            )

    @classmethod
    def from_file(cls: type[HparamsT], path: Path) -> HparamsT:
        """Read the hyperparameters from a JSON file (``remedi/methods/hparams/<method>/``)."""
        return cls.from_dict(io.read_json(path, f"{cls.method_name} hyperparameters"))

    def value_optimization(self) -> ValueOptimization:
        """How ROME's ``v*`` (MEMIT's ``z``) is optimised under these hyperparameters."""
        return ValueOptimization(
            num_steps=self.v_num_grad_steps,
            lr=self.v_lr,
            weight_decay=self.v_weight_decay,
            clamp_norm_factor=self.clamp_norm_factor,
            kl_factor=self.kl_factor,
            kl_prompts=tuple(self.kl_prompts),
            stop_loss=self.v_stop_loss,
        )


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: after ``prompt`` (which mentions ``subject``) the LM should say
    ``target_new``. The subject's last mention in the prompt is the one edited."""

    prompt: str
    subject: str
    target_new: str
    target_true: str = ""

    def __post_init__(self) -> None:
        if not self.subject or self.subject not in self.prompt:
            raise errors.SampleError(
                f"subject {self.subject!r} does not occur in prompt {self.prompt!r}; the edit "
                "needs the subject's tokens in the prompt (ROME reads its key there)"
            )
        if not self.target_new.strip():
            raise errors.SampleError(f"request {self.prompt!r} has an empty target_new")


def target_token_ids(tokenizer: Tokenizer, prompt: str, target: str) -> list[int]:
    """Token ids of ``target`` as it follows ``prompt`` (``prompt + " " + target``).

    Read from one tokenization of the whole text by character offsets, so the first target token
    is the one the model sees after the prompt (with its leading space) and BOS is never included.
    """
    text = f"{prompt} {target.strip()}"
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = [
        token_id
        for token_id, (start, end) in zip(
            encoded["input_ids"], encoded["offset_mapping"], strict=True
        )
        if start >= len(prompt) and end > start
    ]
    straddles = [
        (start, end) for start, end in encoded["offset_mapping"] if start < len(prompt) < end
    ]
    if not ids or straddles:
        raise errors.SampleError(
            f"cannot split {text!r} into prompt tokens and target tokens with this tokenizer "
            "(a token crosses the boundary, or the target has none)"
        )
    return ids


@dataclass
class EditBatch:
    """Token ids of several ``prefix + prompt (+ target tokens)`` sequences, right-padded.

    ``subject_positions`` is the index of the subject's last token in each row; ``target_mask``
    marks the positions whose *next* token is a target token (``labels`` holds that token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    subject_positions: torch.Tensor
    labels: torch.Tensor
    target_mask: torch.Tensor

    def to(self, device: torch.device) -> EditBatch:
        return EditBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.subject_positions.to(device),
            self.labels.to(device),
            self.target_mask.to(device),
        )


def edit_batch(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    subject: str | Sequence[str],
    targets: Sequence[Sequence[int]] | None = None,
) -> EditBatch:
    """Tokenize ``texts`` (each mentioning ``subject``, or its own of ``subject``) and append
    ``targets[i][:-1]`` to text ``i`` as ids, so that one forward pass scores every target token
    (no target: none)."""
    subjects = [subject] * len(texts) if isinstance(subject, str) else list(subject)
    rows: list[list[int]] = []
    subject_positions: list[int] = []
    label_rows: list[list[int]] = []
    for row_index, text in enumerate(texts):
        target_ids = targets[row_index] if targets is not None else ()
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        span = precompute.find_char_spans([text], [subjects[row_index]])
        offsets = torch.tensor(encoded["offset_mapping"]).unsqueeze(0)
        ranges = precompute.token_ranges_from_char_spans(
            span, offsets, torch.ones(1, len(ids), dtype=torch.long), [text]
        )
        subject_positions.append(int(ranges[0, 1]) - 1)
        labels = [-100] * len(ids)
        if target_ids:
            labels[-1] = target_ids[0]
            for index, token_id in enumerate(target_ids[:-1]):
                ids.append(token_id)
                labels.append(target_ids[index + 1])
        rows.append(ids)
        label_rows.append(labels)
    length = max(len(row) for row in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels_tensor = torch.full((len(rows), length), -100, dtype=torch.long)
    for index, (row, labels) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
        labels_tensor[index, : len(labels)] = torch.tensor(labels)
    return EditBatch(
        input_ids,
        attention_mask,
        torch.tensor(subject_positions),
        labels_tensor,
        labels_tensor.ne(-100),
    )


def target_log_probs(logits: torch.Tensor, batch: EditBatch) -> torch.Tensor:
    """Mean log-probability of the target tokens in each row, float32, shape (rows,)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    labels = batch.labels.clamp(min=0)
    token_log_probs = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    mask = batch.target_mask.float()
    return (token_log_probs * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def prefix_templates(mt: models.ModelAndTokenizer, hparams: LocateEditHparams) -> list[str]:
    """:func:`context_templates` with ``hparams``' lengths, source and seed."""
    return context_templates(
        mt, hparams.context_template_lengths, hparams.seed, source=hparams.prefix_source
    )


def context_templates(
    mt: models.ModelAndTokenizer,
    lengths: Sequence[Sequence[int]],
    seed: int = 0,
    source: str = "start_words",
) -> list[str]:
    """Random prefixes: ``"{}"`` (the bare prompt) and, for each ``(length, count)``, ``count``
    texts sampled from the model (top-k 5), each followed by ``". {}"`` (``"{}"`` marks where the
    prompt goes). Braces in the sampled text become spaces (kmeng01/memit
    ``memit/memit_main.py:296``; ROME's ``str.format`` would fail on them).

    ``source="eos"`` is kmeng01/rome's ``get_context_templates`` (``rome/rome_main.py:154-177``):
    every prefix is sampled after the end-of-text token alone, to ``length`` tokens counting that
    token (``generate_fast``'s ``max_out_len``, ``util/generate.py:105``), decoded, NFKD-normalised,
    ``"\\n\\n"`` made a space and the special tokens' text removed (``util/generate.py:149-155``,
    which removes ``<|endoftext|>``, GPT-2's only one), without stripping. The start
    token is :func:`prefix_start_token`'s: ``<|endoftext|>``, else the tokenizer's EOS, else its BOS,
    else (with a warning) the start words.
    ``source="start_words"`` is MEMIT's (``memit/memit_main.py:290-309``): the prefixes start with
    :data:`CONTEXT_TEMPLATE_STARTS` in turn (shuffled), are sampled to about ``length`` tokens and
    stripped.

    Raises:
        errors.UsageError: ``source`` is not one of :data:`PREFIX_SOURCES`.
    """
    if source not in PREFIX_SOURCES:
        raise errors.UsageError(
            f"prefix source must be one of {', '.join(PREFIX_SOURCES)}, got {source!r}"
        )
    start_id = prefix_start_token(mt.tokenizer) if source == "eos" else None
    templates = ["{}"]
    device = models.determine_device(mt.model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if start_id is None:
            texts = _sample_after_start_words(mt, lengths, seed)
        else:
            texts = _sample_after_token(mt, start_id, lengths)
    templates.extend(text.replace("{", " ").replace("}", " ") + ". {}" for text in texts)
    return templates


END_OF_TEXT = "<|endoftext|>"
"""The text kmeng01/rome samples its prefixes after (``rome/rome_main.py:165``): GPT-2's one special
token, also GPT-J's and GPT-NeoX's, and SmolLM2's document separator."""


def prefix_start_token(tokenizer: Tokenizer) -> int | None:
    """The token ROME's prefixes are sampled after: :data:`END_OF_TEXT` when it is one of the
    tokenizer's special tokens, else its EOS token (logged), else its BOS token (with a warning);
    ``None`` (with a warning: the caller falls back to the start words) when there is none.

    :data:`END_OF_TEXT` comes first because it is what the reference feeds: the SmolLM2 conversion
    here names the chat's ``<|im_end|>`` its EOS and ``<|endoftext|>``, which separates its
    pretraining documents, its UNK."""
    if END_OF_TEXT in tokenizer.all_special_tokens:
        token_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        assert isinstance(token_id, int)  # one token converts to one id
        return token_id
    if tokenizer.eos_token_id is not None:
        logger.info(
            "the tokenizer has no %s token; ROME's prefixes are sampled after its EOS token %r",
            END_OF_TEXT,
            tokenizer.eos_token,
        )
        return int(tokenizer.eos_token_id)
    if tokenizer.bos_token_id is not None:
        logger.warning(
            "the tokenizer has no end-of-text token (%s or EOS) to sample ROME's prefixes after; "
            "they are sampled after its BOS token %r instead",
            END_OF_TEXT,
            tokenizer.bos_token,
        )
        return int(tokenizer.bos_token_id)
    logger.warning(
        "the tokenizer has neither an end-of-text nor a BOS token to sample ROME's prefixes "
        "after; they start with MEMIT's start words %s instead (prefix_source start_words)",
        ", ".join(CONTEXT_TEMPLATE_STARTS),
    )
    return None


def _sample_after_token(
    mt: models.ModelAndTokenizer, start_id: int, lengths: Sequence[Sequence[int]]
) -> list[str]:
    """For each ``(length, count)``: ``count`` texts of ``length`` tokens sampled top-k after the
    token ``start_id`` (which counts in ``length``), decoded as :func:`context_templates` says."""
    tokenizer = mt.tokenizer
    device = models.determine_device(mt.model)
    special = [token for token in tokenizer.all_special_tokens if token]
    texts = []
    for length, count in lengths:
        ids = torch.full((int(count), 1), start_id, dtype=torch.long, device=device)
        with torch.no_grad():
            for _ in range(int(length) - 1):
                logits = mt.model(input_ids=ids).logits[:, -1].float()
                top = torch.softmax(logits, dim=-1).topk(PREFIX_TOP_K, dim=-1)
                choice = torch.multinomial(top.values / top.values.sum(-1, keepdim=True), 1)
                ids = torch.cat([ids, top.indices.gather(1, choice)], dim=1)
        for row in ids.tolist():
            decoded = tokenizer.decode(row)
            assert isinstance(decoded, str)  # one sequence decodes to one text
            text = unicodedata.normalize("NFKD", decoded).replace("\n\n", " ")
            for token in special:
                text = text.replace(token, "")
            texts.append(text)
    return texts


def _sample_after_start_words(
    mt: models.ModelAndTokenizer, lengths: Sequence[Sequence[int]], seed: int
) -> list[str]:
    """For each ``(length, count)``: ``count`` texts of about ``length`` tokens sampled (top-k)
    after :data:`CONTEXT_TEMPLATE_STARTS` in turn, shuffled, stripped."""
    tokenizer = mt.tokenizer
    device = models.determine_device(mt.model)
    rng = random.Random(seed)
    texts = []
    for length, count in lengths:
        starts = [CONTEXT_TEMPLATE_STARTS[i % len(CONTEXT_TEMPLATE_STARTS)] for i in range(count)]
        rng.shuffle(starts)
        inputs = tokenizer(starts, return_tensors="pt", padding=True, padding_side="left")
        inputs = inputs.to(device)
        generate: Any = mt.model.generate
        with torch.no_grad():
            generated = generate(
                **inputs,
                do_sample=True,
                top_k=PREFIX_TOP_K,
                max_new_tokens=max(1, int(length) - inputs.input_ids.shape[1]),
                pad_token_id=tokenizer.pad_token_id,
            )
        for text in tokenizer.batch_decode(generated, skip_special_tokens=True):
            texts.append(text.replace("{", " ").replace("}", " ").strip())
    return texts


def record_mlp_keys(
    model: torch.nn.Module, projection: models.MlpOutput
) -> contextlib.AbstractContextManager[dict[str, hooks.Traced]]:
    """Retain the input of the MLP output projection (ROME's keys) on each forward pass:
    ``traced["keys"].input``."""
    return hooks.trace(model, {"keys": projection.module_path}, retain_input=True)


@contextlib.contextmanager
def add_to_output(
    model: torch.nn.Module,
    module_path: str,
    positions: torch.Tensor,
    delta: torch.Tensor,
    recorded: dict[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Add ``delta`` to the output of module ``module_path`` at ``positions[row]`` of each row
    (an MLP projection's tensor, or a decoder block's hidden state); record the clean output
    there first (``recorded["outputs"]``, detached) when ``recorded`` is given."""

    def edit(key: str, hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if recorded is not None:
            recorded["outputs"] = hidden[rows, positions].detach().clone()
        edited = hidden.clone()
        edited[rows, positions] = edited[rows, positions] + delta.to(hidden.dtype)
        return edited

    with hooks.trace(model, {module_path: module_path}, edit_output=edit):
        yield


def add_to_mlp_output(
    model: torch.nn.Module,
    projection: models.MlpOutput,
    positions: torch.Tensor,
    delta: torch.Tensor,
    recorded: dict[str, torch.Tensor] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """:func:`add_to_output` at the MLP output projection ``projection`` (ROME's ``v``)."""
    return add_to_output(model, projection.module_path, positions, delta, recorded)


@dataclass(frozen=True)
class ValueOptimization:
    """How ROME's ``v*`` (and MEMIT's ``z``) is optimised: Adam on a vector added at the
    subject's last token, with a KL term, a weight decay and a norm clamp."""

    num_steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    kl_prompts: Sequence[str]
    stop_loss: float = 5e-2
    """Stop once the loss is below this (the references' fixed 0.05)."""


def optimize_value(
    mt: models.ModelAndTokenizer,
    request: EditRequest,
    texts: Sequence[str],
    module_path: str,
    settings: ValueOptimization,
) -> torch.Tensor:
    """The output of ``module_path`` at the subject's last token that makes the model say the
    target after each of ``texts`` (the prompt behind prefixes; ``texts[0]`` the bare prompt).

    Returns ``init + delta`` (float32), ``init`` being the clean output in ``texts[0]``. The loss is
    the target's mean token NLL over ``texts`` + ``kl_factor`` KL(clean || edited) of the next
    token after each KL prompt at the subject + ``weight_decay |delta| / |init|^2``; ``delta`` is
    clamped to ``clamp_norm_factor |init|`` after each step (ROME's ``compute_v``, MEMIT's
    ``compute_z``). Runs in float32 whatever the model's dtype.

    Raises:
        errors.RemediError: The loss is not finite (lower ``lr``).
    """
    target_ids = target_token_ids(mt.tokenizer, request.prompt, request.target_new)
    kl_texts = [prompt.replace("{}", request.subject) for prompt in settings.kl_prompts]
    batch = edit_batch(
        mt.tokenizer,
        [*texts, *kl_texts],
        request.subject,
        [target_ids] * len(texts) + [[]] * len(kl_texts),
    ).to(mt.device)
    num_rewrite = len(texts)
    kl_rows = torch.arange(num_rewrite, num_rewrite + len(kl_texts), device=mt.device)
    # The output of an MLP projection and of a decoder block both have the residual's width.
    delta = torch.zeros(models.determine_hidden_size(mt.model), device=mt.device)
    delta.requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=settings.lr)
    target_init: torch.Tensor | None = None
    kl_init: torch.Tensor | None = None
    for step in range(settings.num_steps):
        optimizer.zero_grad()
        recorded: dict[str, torch.Tensor] = {}
        with add_to_output(mt.model, module_path, batch.subject_positions, delta, recorded):
            logits = mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if target_init is None:
            # The clean output at the subject in the bare prompt (delta is still 0).
            target_init = recorded["outputs"][0].float()
        kl_log_probs = torch.log_softmax(
            logits[kl_rows, batch.subject_positions[kl_rows]].float(), dim=-1
        )
        if kl_init is None:
            kl_init = kl_log_probs.detach().clone()
        log_probs = torch.log_softmax(logits[:num_rewrite].float(), dim=-1)
        labels = batch.labels[:num_rewrite]
        mask = batch.target_mask[:num_rewrite].float()
        token_log_probs = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = -(token_log_probs * mask).sum() / mask.sum()
        kl = settings.kl_factor * torch.nn.functional.kl_div(
            kl_init, kl_log_probs, log_target=True, reduction="batchmean"
        )
        decay = settings.weight_decay * delta.norm() / target_init.norm() ** 2
        loss = nll + kl + decay
        logger.debug(
            "value step %d: loss %.3f = nll %.3f + kl %.3f + decay %.3f",
            step,
            loss.item(),
            nll.item(),
            kl.item(),
            decay.item(),
        )
        if not torch.isfinite(loss):
            raise errors.RemediError(
                f"the value optimisation's loss became {loss.item()} at step {step}; lower v_lr"
            )
        if loss.item() < settings.stop_loss or step == settings.num_steps - 1:
            break
        loss.backward()
        optimizer.step()
        max_norm = settings.clamp_norm_factor * target_init.norm()
        with torch.no_grad():
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    if target_init is None:
        raise errors.UsageError("the value optimisation needs at least one step (v_num_grad_steps)")
    return (target_init + delta).detach()


def weight_as_out_in(weight: torch.Tensor, projection: models.MlpOutput) -> torch.Tensor:
    """The projection's weight as (out, in), whatever its layout."""
    return weight.T if projection.transposed else weight


LOST_UPDATE_WARNING_SHARE = 0.1
"""Warn when rounding an edited weight to the model's dtype loses more than this share of the
update, by norm: ``|cast(W + delta) - W - delta| / |delta|``. In float32 an update loses about
1e-7 of itself; float16 keeps 11 significant bits and bfloat16 8, so the entries of an update
much smaller than the weights' round away, and once a tenth of the update is gone the model no
longer computes the edit the method solved for."""


class EditPrecisionError(errors.RemediError, ArithmeticError):
    """An edited weight is not finite in the model's dtype (it overflows half precision)."""


def cast_edited_weight(
    name: str, weight: torch.Tensor, edited: torch.Tensor, method: str
) -> torch.Tensor:
    """``edited`` (the new value of parameter ``name``, computed from ``weight`` in float32 or
    float64) in ``weight``'s dtype, after checking what the cast kept.

    Logs a warning naming the tensor when rounding loses more than
    :data:`LOST_UPDATE_WARNING_SHARE` of the update ``edited - weight``.

    Raises:
        EditPrecisionError: The new value has an infinite or NaN entry in ``weight``'s dtype:
            an update that overflows half precision (load the model in float32), or one that
            was not finite to begin with.
    """
    new = edited.to(weight.dtype)
    finite = torch.isfinite(new)
    if not bool(finite.all()):
        count = int((~finite).sum())
        if bool(torch.isfinite(edited).all()):
            largest = float(edited.abs().max())
            raise EditPrecisionError(
                f"{method}'s new value of {name} overflows {weight.dtype}: {count} of its "
                f"{new.numel()} entries are infinite after the cast (largest |value| "
                f"{largest:.4g}; {weight.dtype} holds up to {torch.finfo(weight.dtype).max:.4g}). "
                "Load the model in float32 (--dtype float32)."
            )
        raise EditPrecisionError(
            f"{method}'s new value of {name} has {count} infinite or NaN entries before any "
            "cast: the method's update diverged (lower its learning rate or check its inputs)"
        )
    if torch.finfo(new.dtype).bits >= torch.finfo(edited.dtype).bits:
        return new
    delta = edited - weight.detach().to(edited.dtype)
    delta_norm = delta.norm()
    if float(delta_norm) == 0.0:
        return new
    applied = new.to(edited.dtype) - weight.detach().to(edited.dtype)
    lost = float((applied - delta).norm() / delta_norm)
    if lost > LOST_UPDATE_WARNING_SHARE:
        changed = delta != 0
        vanished = float(((applied == 0) & changed).sum()) / max(int(changed.sum()), 1)
        logger.warning(
            "%s's update of %s lost %.1f%% of its norm to rounding into %s (%.1f%% of its "
            "non-zero entries left the weight unchanged); load the model in float32 "
            "(--dtype float32) to apply the whole edit",
            method,
            name,
            100 * lost,
            weight.dtype,
            100 * vanished,
        )
    return new


def check_layers(mt: models.ModelAndTokenizer, layers: Sequence[int]) -> None:
    """Raise a clear :class:`errors.UsageError` if a layer is out of range."""
    models.determine_layer_paths(mt.model, list(layers))


@contextlib.contextmanager
def substituted(model: torch.nn.Module, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Run the model with ``replacements`` (by parameter name) in place of some parameters.

    The parameters are swapped for the given tensors through their modules for the body's
    duration and put back on exit (also on error); their storage is never written, so the
    replacements may be trainable tensors or an edit being tried out.
    """
    originals: dict[str, torch.nn.Parameter] = {}
    try:
        for name, tensor in replacements.items():
            module_name, _, attribute = name.rpartition(".")
            module = model.get_submodule(module_name)
            originals[name] = module._parameters[attribute]  # type: ignore[assignment]
            del module._parameters[attribute]
            setattr(module, attribute, tensor)
        yield
    finally:
        for name, parameter in originals.items():
            module_name, _, attribute = name.rpartition(".")
            module = model.get_submodule(module_name)
            if attribute in module.__dict__:
                delattr(module, attribute)
            module._parameters[attribute] = parameter


def shrink_moment(moment: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``(1 - shrinkage) C + shrinkage (tr C / d) I`` in float64: a well-conditioned ``C`` when its
    estimate is poor (few tokens, dead units); 0 leaves ``C`` as it is (the papers' choice)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise errors.UsageError(f"mom2_shrinkage must be in [0, 1], got {shrinkage}")
    moment = moment.double()
    if shrinkage == 0.0:
        return moment
    scale = torch.diagonal(moment).mean()
    identity = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    return (1.0 - shrinkage) * moment + shrinkage * scale * identity
