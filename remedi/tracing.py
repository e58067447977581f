"""Causal tracing (Meng et al. 2022, ROME): which hidden states carry a fact to the output.

For a prompt that mentions a subject and a target the model predicts:

1. the clean run records every layer's residual stream (decoder block output), MLP output and
   attention output at every token;
2. the corrupted runs add Gaussian noise to the subject's token embeddings, ``noise_scale``
   (ROME's default rule ``s3``: 3 x the standard deviation of subject token embeddings over the
   dataset, kmeng01/rome experiments/causal_trace.py:54,79-86; see :func:`noise_scale_for`)
   times a fixed standard normal draw per noise sample (ROME: 10, causal_trace.py:301);
3. a restored run is a corrupted run in which the clean state of one module kind is put back
   at one token, at the layers of a window around one layer (the window of ROME's
   ``trace_important_window``, causal_trace.py:424-429: ``[layer - window // 2,
   layer + ceil(window / 2))`` clipped to the model);
4. the indirect effect of that (token, layer) is ``p(target | restored) - p(target | corrupted)``,
   each averaged over the noise samples (as ROME, causal_trace.py:220), ``p`` being the
   probability of the target's first token at the prompt's last position.

Where this differs from ROME (kmeng01/rome at 0874014, experiments/causal_trace.py and
notebooks/average_causal_effects.ipynb), on purpose or as an option:

- **Residual windows.** ROME restores the residual stream at a single layer
  (``trace_important_states``, causal_trace.py:369-400, used for ``kind=None`` at :328-339);
  only MLP and attention restore a window (:340-353). Here every kind takes every window of
  :attr:`TraceSettings.windows`: ``kinds=["residual"], windows=[1]`` (``--kinds residual
  --window-sizes 1``) restores as ROME's residual trace does; a wider residual window is ours.
- **Which cases count.** ROME traces a case when its clean top-1 token, decoded and stripped
  of whitespace, is the expected answer string (causal_trace.py:316-319), and then traces the
  probability of that token. Here a case is ``correct`` when the top-1 token id is the
  target's first token id (:func:`trace_prompt`): a several-token target whose first token
  is predicted is traced (ROME skips it: no one token decodes to it), and a top-1 token that
  spells the target without its leading space is not (ROME keeps it).
  :func:`answered_as_rome` tells, for a traced result, whether ROME would have kept it.
- **Averages.** ROME pools tokens across cases and leaves the tokens before the subject out;
  :func:`average_trace` averages each case first by default and counts those tokens as
  further tokens, and ``pooling="token"`` is ROME's (see there).
- **Noise.** ROME counts each subject as often as the dataset lists it in the spread of the
  embeddings (causal_trace.py:83-84,647-656); :func:`embedding_std` counts each distinct
  subject once unless ``distinct=False``. ROME draws the noise from numpy's
  ``RandomState(1)`` anew in every run (causal_trace.py:167-171), so all restorations share
  it, as here; the numbers themselves are torch's, seeded by :attr:`TraceSettings.seed`.

All restorations of a case share the same noise, and run batched: (restorations x noise samples)
rows per forward pass, so a case costs a few passes, not one per (token, layer). Every hook is
a :func:`remedi.hooks.trace`, removed on exit also when the forward pass raises.

The restored runs share their prefix with the corrupted run: attention is causal, so a run that
restores states at token ``t`` (and none before) equals the corrupted run at every token before
``t``. The corrupted run is computed once, one row per noise sample, keeping its key/value cache;
the restorations at token ``t`` (every layer's, in one batch) then run only tokens ``t..`` after a
copy of that cache cut to its first ``t`` tokens, each row continuing its noise sample's prefix.
Their noise covers only the subject tokens from ``t`` on (those before are in the cache, noised),
their clean states are put back from ``t`` on, and their positions count from ``t``. A token
before the subject holds the same state in the clean and the corrupted run (the noise starts at the
subject), so restoring it is the corrupted run: those restorations run on the last token alone. On a
prompt of n tokens whose subject starts at token s, this computes about (n - s)^2 / n^2 of the whole
prompt's runs (a quarter for a subject in mid-prompt). ``reuse_prefix=False``
runs every restoration on the whole prompt: the definition, which gives the same scores up to
rounding, and the fallback for a model whose forward takes no key/value cache.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import errors, hooks, io, models, precompute
from remedi.methods import common
from remedi.report import figures

logger = logging.getLogger(__name__)

KINDS = ("residual", "mlp", "attn")
"""What a restoration puts back: the decoder block's output, its MLP's or its attention's."""
NOISE_FACTOR = 3.0
"""ROME's default noise level (rule ``s3``, experiments/causal_trace.py:54,79-86), in standard
deviations of subject token embeddings."""
DEFAULT_NUM_SAMPLES = 10
DEFAULT_WINDOWS = (10, 5, 3, 1)
DEFAULT_SEED = 1
DEFAULT_MAX_BATCH_ROWS = 512
ATTENTION_NAMES = ("attn", "self_attn", "attention", "self_attention")
"""Names of the attention submodule of a decoder block across families."""
TOKEN_CATEGORIES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
"""Rows of ROME's average heatmaps (kmeng01/rome notebooks/average_causal_effects.ipynb:86-104,
``read_knowlege``). :func:`token_categories` puts each token in exactly one row; ROME's reading
(:func:`rome_category_positions`) puts a token in two rows where the rows' positions coincide
and the tokens before the subject in none."""
POOLINGS = ("case", "token")
"""How :func:`average_trace` averages tokens: within each case first, or pooled as ROME."""


@dataclass
class TraceSettings(DataClassJsonMixin):
    """How a case was traced; a saved result is reused only under equal settings."""

    noise_scale: float
    num_samples: int = DEFAULT_NUM_SAMPLES
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    windows: list[int] = field(default_factory=lambda: list(DEFAULT_WINDOWS))
    seed: int = DEFAULT_SEED

    def matches(self, other: TraceSettings) -> bool:
        """Whether a result traced under ``other`` can stand for one under these settings: equal,
        except that the noise scales need only agree to 1e-9 relative (the scale is a mean over
        the dataset's subjects, whose last digits depend on the thread count's summation order).
        """
        return dataclasses.replace(other, noise_scale=self.noise_scale) == self and math.isclose(
            other.noise_scale, self.noise_scale, rel_tol=1e-9
        )

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown:
            raise errors.UsageError(f"unknown trace kinds {unknown}; choose from {list(KINDS)}")
        if not self.windows or any(window < 1 for window in self.windows):
            raise errors.UsageError(f"window sizes must be positive integers, got {self.windows}")
        if self.num_samples < 1:
            raise errors.UsageError(f"num_samples must be at least 1, got {self.num_samples}")
        if not self.noise_scale > 0:
            raise errors.UsageError(f"noise_scale must be positive, got {self.noise_scale}")


def score_key(kind: str, window: int) -> str:
    """The key of one (kind, window) grid in :attr:`TraceResult.scores`, e.g. ``mlp/10``."""
    return f"{kind}/{window}"


@dataclass
class TraceResult(DataClassJsonMixin):
    """One traced prompt. ``scores[score_key(kind, window)][token][layer]`` is
    ``p(target | corrupted, restored at that token and window)``; empty if not ``correct``."""

    case_id: int
    prompt: str
    subject: str
    target: str
    tokens: list[str]
    subject_range: list[int]
    """``[start, end)`` token positions of the subject (its last mention)."""
    target_id: int
    predicted_id: int
    clean_prob: float
    corrupted_prob: float | None
    """``p(target)`` with the subject noised; None for a case skipped as not ``correct`` (the
    filter comes first, so a skipped case costs one clean run)."""
    correct: bool
    """Whether the clean model's top prediction is the target's first token. ROME's filter
    differs: the decoded top-1 token is the whole target (:func:`answered_as_rome`)."""
    settings: TraceSettings
    scores: dict[str, list[list[float]]] = field(default_factory=dict)

    def corrupted(self) -> float:
        """:attr:`corrupted_prob` of a traced case.

        Raises:
            errors.UsageError: The case was skipped (the model did not answer it correctly).
        """
        if self.corrupted_prob is None:
            raise errors.UsageError(
                f"case {self.case_id} was not traced: the model did not answer it correctly"
            )
        return self.corrupted_prob

    def restored(self, kind: str, window: int) -> np.ndarray:
        """``(tokens, layers)`` probabilities of the target with each state restored."""
        key = score_key(kind, window)
        if key not in self.scores:
            raise errors.UsageError(
                f"case {self.case_id} was not traced for {kind} with window {window} "
                f"(has: {sorted(self.scores) or 'nothing: the model did not answer correctly'})"
            )
        return np.asarray(self.scores[key], dtype=np.float64)

    def indirect_effects(self, kind: str, window: int) -> np.ndarray:
        """``(tokens, layers)`` indirect effects: restored minus corrupted probability."""
        return self.restored(kind, window) - self.corrupted()

    def effect_at(self, kind: str, window: int, layer: int, token: int | None = None) -> float:
        """The indirect effect at ``layer`` and ``token`` (default: the last subject token)."""
        effects = self.indirect_effects(kind, window)
        if not 0 <= layer < effects.shape[1]:
            raise errors.UsageError(
                f"layer {layer} is out of range: the traced model has {effects.shape[1]} layers"
            )
        position = self.subject_range[1] - 1 if token is None else token
        return float(effects[position, layer])


# ---------------------------------------------------------------------------------------------
# Where things are.


def layer_window(layer: int, window: int, num_layers: int) -> list[int]:
    """ROME's window of ``window`` layers around ``layer``, clipped to ``[0, num_layers)``
    (kmeng01/rome experiments/causal_trace.py:424-429, where only MLP and attention take one)."""
    if not 0 <= layer < num_layers:
        raise errors.UsageError(f"layer {layer} is out of range for a model of {num_layers} layers")
    return list(range(max(0, layer - window // 2), min(num_layers, layer - (-window // 2))))


def module_of(model: torch.nn.Module | models.ModelAndTokenizer, kind: str, layer: int) -> Any:
    """The module whose output a restoration of ``kind`` at ``layer`` puts back."""
    module = models.unwrap_model(model)
    block = models.resolve_layer(module, layer)
    if kind == "residual":
        return block
    if kind == "mlp":
        projection = models.determine_mlp_output(module, layer)
        return module.get_submodule(projection.module_path.rsplit(".", 1)[0])
    if kind == "attn":
        for name in ATTENTION_NAMES:
            if isinstance(getattr(block, name, None), torch.nn.Module):
                return getattr(block, name)
        raise models.UnsupportedModelError(
            f"no attention submodule named one of {ATTENTION_NAMES} in {type(block).__name__}; "
            "add its name to remedi.tracing.ATTENTION_NAMES"
        )
    raise errors.UsageError(f"unknown trace kind {kind!r}; choose from {list(KINDS)}")


def subject_token_range(
    tokenizer: transformers.PreTrainedTokenizerBase, prompt: str, subject: str
) -> tuple[list[int], tuple[int, int]]:
    """The prompt's token ids and the ``[start, end)`` token range of the subject's last mention.

    Raises:
        errors.SampleError: The subject does not occur in the prompt.
    """
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    spans = precompute.find_char_spans([prompt], [subject])
    offsets = torch.tensor(encoded["offset_mapping"]).unsqueeze(0)
    ranges = precompute.token_ranges_from_char_spans(
        spans, offsets, torch.ones(1, len(ids), dtype=torch.long), [prompt]
    )
    return ids, (int(ranges[0, 0]), int(ranges[0, 1]))


# ---------------------------------------------------------------------------------------------
# Noise.


def embedding_std(
    mt: models.ModelAndTokenizer, subjects: Sequence[str], distinct: bool = True
) -> float:
    """Standard deviation of all entries of the subjects' token embeddings, as ROME's
    ``collect_embedding_std`` (experiments/causal_trace.py:647-656), special tokens excluded
    (ROME's GPT tokenizers add none).

    ``distinct``: each distinct subject counts once (ours, the default); False counts each as
    often as ``subjects`` lists it, as ROME, which passes every fact's subject (:83-84).
    """
    counted = dict.fromkeys(subjects) if distinct else subjects
    ids = [
        token_id
        for subject in counted
        for token_id in mt.tokenizer(subject, add_special_tokens=False)["input_ids"]
    ]
    if not ids:
        raise errors.UsageError("no subject tokens to measure the embeddings' spread on")
    embeddings = mt.model.get_input_embeddings()
    with torch.no_grad():
        vectors = embeddings(torch.tensor(ids, device=mt.device))
    return float(vectors.double().std())


def noise_scale_for(
    mt: models.ModelAndTokenizer,
    subjects: Sequence[str],
    factor: float = NOISE_FACTOR,
    distinct: bool = True,
) -> float:
    """ROME's noise level: ``factor`` (3) times :func:`embedding_std` of the subjects."""
    return factor * embedding_std(mt, subjects, distinct)


def subject_noise(
    num_samples: int, num_tokens: int, hidden_size: int, scale: float, seed: int
) -> torch.Tensor:
    """``scale`` times a seeded standard normal draw, ``(num_samples, num_tokens, hidden)``,
    float64: the same for every restoration of a case, as ROME's (which reseeds numpy's
    ``RandomState(1)`` in every run, experiments/causal_trace.py:167), though not ROME's
    numbers."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randn(num_samples, num_tokens, hidden_size, generator=generator)
    return scale * draw.double()


@contextlib.contextmanager
def noised_embeddings(
    model: torch.nn.Module | models.ModelAndTokenizer,
    token_range: tuple[int, int],
    noise: torch.Tensor,
) -> Iterator[None]:
    """Add ``noise`` (``(samples, range length, hidden)``) to the token embeddings in
    ``token_range`` on every forward pass in the body. A batch of ``k * samples`` rows gets
    sample ``i % samples`` in row ``i``."""
    module = models.unwrap_model(model)
    start, end = token_range
    if noise.shape[1] != end - start:
        raise ValueError(
            f"noise covers {noise.shape[1]} tokens but the range {token_range} has {end - start}"
        )

    def add(key: str, output: torch.Tensor) -> torch.Tensor:
        rows = output.shape[0]
        if rows % noise.shape[0] != 0:
            raise ValueError(
                f"a batch of {rows} rows is not a multiple of {noise.shape[0]} noise samples"
            )
        repeated = noise.to(output.device, output.dtype).repeat(rows // noise.shape[0], 1, 1)
        noised = output.clone()
        noised[:, start:end] = noised[:, start:end] + repeated
        return noised

    embeddings: torch.nn.Module = module.get_input_embeddings()  # type: ignore[operator]
    with hooks.trace(module, {"embeddings": embeddings}, edit_output=add):
        yield


def noise_from(
    start: int, token_range: tuple[int, int], noise: torch.Tensor
) -> tuple[tuple[int, int], torch.Tensor]:
    """The subject range and its noise as seen by a pass whose input begins at token ``start``:
    the range shifted by ``start``, without the tokens before it (they are in the cache)."""
    first, end = (max(position, start) for position in token_range)
    return (first - start, end - start), noise[:, first - token_range[0] :]


# ---------------------------------------------------------------------------------------------
# The runs.


def clean_states(
    mt: models.ModelAndTokenizer, input_ids: torch.Tensor, kinds: Sequence[str]
) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """One clean run of a ``(1, seq)`` prompt: the next-token probabilities at its last
    position (vocab,), and each kind's output ``(seq, hidden)`` at every layer."""
    modules = {
        (kind, layer): module_of(mt, kind, layer)
        for kind in kinds
        for layer in range(mt.num_layers)
    }
    with torch.no_grad(), hooks.trace(mt.model, modules, retain_output=True, detach=True) as traced:
        probs = _last_token_probs(mt, input_ids)
    states = {key: kept.output[0] for key, kept in traced.items() if kept.output is not None}
    return probs[0], states


def _last_token_probs(
    mt: models.ModelAndTokenizer, input_ids: torch.Tensor, **forward_kwargs: Any
) -> torch.Tensor:
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    positions[:, -1] = True
    logits = models.logits_at(mt.model, {"input_ids": input_ids}, positions, **forward_kwargs)
    return torch.softmax(logits.double(), dim=-1)


def prefix_reuse_blocker(model: torch.nn.Module | models.ModelAndTokenizer) -> str | None:
    """Why restored runs of ``model`` cannot start from the corrupted run's key/value cache
    (its forward takes no cache), or None when they can."""
    module = models.unwrap_model(model)
    if models.cache_argument(module) is None:
        return f"{type(module).__name__}.forward takes no key/value cache"
    return None


def _prefix_reuse_possible(model: torch.nn.Module | models.ModelAndTokenizer) -> bool:
    """Whether restored runs can reuse the corrupted prefix; logs why not (once per caller,
    which then asks :func:`restored_probs` for runs of the whole prompt)."""
    blocker = prefix_reuse_blocker(model)
    if blocker is not None:
        logger.warning("restoring on runs of the whole prompt: %s", blocker)
    return blocker is None


def corrupted_prefix(
    mt: models.ModelAndTokenizer,
    input_ids: torch.Tensor,
    token_range: tuple[int, int],
    noise: torch.Tensor,
) -> tuple[transformers.DynamicCache | None, str]:
    """The corrupted run's key/value cache at every token, one row per noise sample; None and
    the reason when the model cannot give one."""
    blocker = prefix_reuse_blocker(mt)
    if blocker is not None:
        return None, blocker
    rows = noise.shape[0]
    cache = transformers.DynamicCache()
    with torch.no_grad(), noised_embeddings(mt, token_range, noise):
        _last_token_probs(
            mt,
            input_ids.to(mt.device).expand(rows, -1),
            **models.cache_kwargs(mt.model, cache),
        )
    if cache.get_seq_length() != input_ids.shape[1]:
        return None, (
            f"its corrupted run cached {cache.get_seq_length()} of {input_ids.shape[1]} tokens"
        )
    return cache, ""


def _prefix_cache(
    prefix: transformers.DynamicCache, start: int, rows: int, num_samples: int
) -> transformers.DynamicCache:
    """A copy of ``prefix`` (one row per noise sample) cut to its first ``start`` tokens, for
    ``rows`` rows: row ``i`` continues noise sample ``i % num_samples``, as in
    :func:`noised_embeddings`. The copy leaves ``prefix`` as it was for the next start."""
    cache = copy.deepcopy(prefix)
    cache.crop(start - cache.get_seq_length())  # negative: the number of tokens to drop
    cache.batch_select_indices(torch.arange(rows) % num_samples)
    return cache


def restored_probs(
    mt: models.ModelAndTokenizer,
    input_ids: torch.Tensor,
    target_id: int,
    token_range: tuple[int, int],
    noise: torch.Tensor,
    kind: str,
    restore: torch.Tensor,
    states: dict[tuple[str, int], torch.Tensor],
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    reuse_prefix: bool = True,
) -> torch.Tensor:
    """``p(target)`` averaged over the noise samples, for each restoration, float64 (configs,).

    ``restore`` is a boolean ``(configs, layers, seq)`` mask: configuration ``c`` puts back the
    clean output of ``kind`` at every ``(layer, token)`` it marks (none: the corrupted run).
    Configurations run ``max_batch_rows // samples`` at a time, each with every noise sample.

    With ``reuse_prefix``, a configuration whose first restored token is ``t`` equals the
    corrupted run before ``t`` (attention is causal), so it runs only tokens ``t..`` after the
    corrupted run's key/value cache of the tokens before; one that restores only tokens before
    the subject is the corrupted run itself (nothing there differs from it), run on the last
    token. Without, every run covers the whole prompt (the definition; also the fallback for a
    model that cannot pass a cache).
    """
    num_samples, seq_len = noise.shape[0], input_ids.shape[1]
    per_pass = max(1, max_batch_rows // num_samples)
    layers = [layer for layer in range(restore.shape[1]) if bool(restore[:, layer].any())]
    clean = {layer: states[(kind, layer)] for layer in layers}
    restored_modules = {layer: module_of(mt, kind, layer) for layer in layers}
    prefix = None
    if reuse_prefix:
        prefix, reason = corrupted_prefix(mt, input_ids, token_range, noise)
        if prefix is None:
            logger.warning("restoring on runs of the whole prompt: %s", reason)
    # The first token each configuration restores; the corrupted run needs the last token.
    restored_any = restore.any(dim=1)
    first_restored = torch.where(
        restored_any.any(dim=1), restored_any.int().argmax(dim=1), seq_len - 1
    )
    if prefix is not None:
        # Before the subject the clean states are the corrupted run's (its noise starts at the
        # subject; attention is causal), so restoring only there changes nothing: such a
        # configuration is the corrupted run, computed from the cache on the last token alone.
        before_subject = restored_any.any(dim=1) & ~restored_any[:, token_range[0] :].any(dim=1)
        starts = torch.where(before_subject, seq_len - 1, first_restored)
    else:
        starts = torch.zeros_like(first_restored)

    def run(configs: torch.Tensor, start: int) -> torch.Tensor:
        chunk = restore[configs].to(mt.device)
        row_masks = chunk.repeat_interleave(num_samples, dim=0)[..., start:]  # (rows, layers, seq)

        def put_back(
            layer: int, hidden: torch.Tensor, masks: torch.Tensor = row_masks
        ) -> torch.Tensor:
            mask = masks[:, layer].unsqueeze(-1)
            return torch.where(mask, clean[layer][start:].to(hidden).unsqueeze(0), hidden)

        batch_ids = input_ids[:, start:].to(mt.device).expand(row_masks.shape[0], -1)
        forward_kwargs: dict[str, Any] = {}
        if prefix is not None and start > 0:
            cache = _prefix_cache(prefix, start, row_masks.shape[0], num_samples)
            forward_kwargs = models.cache_kwargs(mt.model, cache)
            if models.accepts_argument(mt.model, "position_ids"):  # ALiBi models take none
                positions = torch.arange(start, seq_len, device=mt.device)
                forward_kwargs["position_ids"] = positions.unsqueeze(0)
        visible_range, visible_noise = noise_from(start, token_range, noise)
        with (
            torch.no_grad(),
            noised_embeddings(mt, visible_range, visible_noise),
            hooks.trace(mt.model, restored_modules, edit_output=put_back),
        ):
            probs = _last_token_probs(mt, batch_ids, **forward_kwargs)[:, target_id]
        return probs.view(chunk.shape[0], num_samples).mean(dim=1).cpu()

    results = torch.empty(restore.shape[0], dtype=torch.float64)
    for start in starts.unique().tolist():
        configs = torch.nonzero(starts == start).flatten()
        for first in range(0, len(configs), per_pass):
            batch = configs[first : first + per_pass]
            results[batch] = run(batch, start)
    return results


def restoration_masks(num_layers: int, seq_len: int, window: int) -> torch.Tensor:
    """``(seq * layers, layers, seq)``: configuration ``token * layers + layer`` restores the
    window around ``layer`` at ``token``."""
    masks = torch.zeros(seq_len * num_layers, num_layers, seq_len, dtype=torch.bool)
    for token in range(seq_len):
        for layer in range(num_layers):
            masks[token * num_layers + layer, layer_window(layer, window, num_layers), token] = True
    return masks


def trace_prompt(
    mt: models.ModelAndTokenizer,
    prompt: str,
    subject: str,
    target: str,
    settings: TraceSettings,
    case_id: int = 0,
    require_correct: bool = True,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    reuse_prefix: bool = True,
) -> TraceResult:
    """Trace one prompt for every kind and window of ``settings``.

    With ``require_correct``, a prompt whose top prediction is not the target's first token is
    returned with ``correct=False`` and no scores, after one clean pass. ROME filters by the
    decoded top-1 token instead (see the module's description and :func:`answered_as_rome`).
    ``reuse_prefix``: see :func:`restored_probs` (the scores are the same either way).

    Raises:
        errors.SampleError: The subject does not occur in the prompt, or the target cannot be
            told apart from the prompt's tokens.
    """
    reuse_prefix = reuse_prefix and _prefix_reuse_possible(mt)
    ids, token_range = subject_token_range(mt.tokenizer, prompt, subject)
    target_id = common.target_token_ids(mt.tokenizer, prompt, target)[0]
    input_ids = torch.tensor([ids], device=mt.device)
    clean, states = clean_states(mt, input_ids, settings.kinds)
    predicted_id = int(clean.argmax())
    noise = subject_noise(
        settings.num_samples,
        token_range[1] - token_range[0],
        mt.hidden_size,
        settings.noise_scale,
        settings.seed,
    )
    num_layers, seq_len = mt.num_layers, len(ids)
    result = TraceResult(
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target=target,
        tokens=[str(mt.tokenizer.decode([token])) for token in ids],
        subject_range=list(token_range),
        target_id=target_id,
        predicted_id=predicted_id,
        clean_prob=float(clean[target_id]),
        corrupted_prob=None,
        correct=predicted_id == target_id,
        settings=settings,
    )
    if require_correct and not result.correct:
        return result
    nothing = torch.zeros(1, num_layers, seq_len, dtype=torch.bool)
    corrupted = restored_probs(
        mt,
        input_ids,
        target_id,
        token_range,
        noise,
        "residual",
        nothing,
        states,
        max_batch_rows,
        reuse_prefix,
    )
    result.corrupted_prob = float(corrupted[0])
    for kind in settings.kinds:
        for window in settings.windows:
            masks = restoration_masks(num_layers, seq_len, window)
            probs = restored_probs(
                mt,
                input_ids,
                target_id,
                token_range,
                noise,
                kind,
                masks,
                states,
                max_batch_rows,
                reuse_prefix,
            )
            result.scores[score_key(kind, window)] = probs.view(seq_len, num_layers).tolist()
    return result


def trace_cases(
    mt: models.ModelAndTokenizer,
    cases: Sequence[tuple[int, str, str, str]],
    settings: TraceSettings,
    directory: Path,
    rerun: bool = False,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    reuse_prefix: bool = True,
) -> list[TraceResult]:
    """Trace ``(case_id, prompt, subject, target)`` cases, each saved as
    ``directory/<case_id>.json``; a case already saved with equal settings is read back, not
    recomputed (unless ``rerun``). ``reuse_prefix``: see :func:`restored_probs`."""
    reuse_prefix = reuse_prefix and _prefix_reuse_possible(mt)
    results = []
    reused = 0
    for case_id, prompt, subject, target in tqdm(cases, desc="tracing"):
        path = Path(directory) / f"{case_id}.json"
        if path.is_file() and not rerun:
            saved = TraceResult.from_dict(io.read_json(path, "trace result"))
            if saved.settings.matches(settings):
                results.append(saved)
                reused += 1
                continue
        result = trace_prompt(
            mt,
            prompt,
            subject,
            target,
            settings,
            case_id,
            max_batch_rows=max_batch_rows,
            reuse_prefix=reuse_prefix,
        )
        io.write_json(path, result.to_dict(), indent=None)
        results.append(result)
    if reused:
        logger.info("reused %d traced cases from %s", reused, directory)
    return results


# ---------------------------------------------------------------------------------------------
# Averages and heatmaps.


def token_categories(subject_range: Sequence[int], seq_len: int) -> list[int]:
    """The index in :data:`TOKEN_CATEGORIES` of each token (the last token wins over the
    subsequent-token rows; a one-token subject is its own last token; the tokens before the
    subject are further tokens). ROME's rows differ: :func:`rome_category_positions`."""
    start, end = subject_range
    categories = []
    for position in range(seq_len):
        if start <= position < end:
            if position == end - 1:
                categories.append(2)
            elif position == start:
                categories.append(0)
            else:
                categories.append(1)
        elif position == seq_len - 1:
            categories.append(5)
        elif position == end:
            categories.append(3)
        else:
            categories.append(4)
    return categories


def rome_category_positions(subject_range: Sequence[int], seq_len: int) -> list[list[int]]:
    """The token positions of each row of :data:`TOKEN_CATEGORIES` as ROME's average reads
    them (kmeng01/rome notebooks/average_causal_effects.ipynb:86-104): the subject's first
    token, those between its first and last, its last, the token after it, those between that
    and the last token, the last token.

    Unlike :func:`token_categories`, a token can be in two rows: a one-token subject is both its
    first and its last token, and the token after the subject is the first subsequent token
    also when it is the last. (ROME's reading fails on a subject that ends the prompt; here
    the first subsequent token's row is then empty.)
    """
    start, end = subject_range
    last = seq_len - 1
    return [
        [start],
        list(range(start + 1, end - 1)),
        [end - 1],
        [end] if end <= last else [],
        list(range(end + 1, last)),
        [last],
    ]


def answered_as_rome(result: TraceResult, tokenizer: transformers.PreTrainedTokenizerBase) -> bool:
    """Whether ROME's filter keeps the case: the clean top-1 token, decoded and stripped of
    whitespace, is the whole target (kmeng01/rome experiments/causal_trace.py:316-319, which
    compares it with the fact's expected answer).

    Of the ``correct`` results, these are the ones whose target is that one token. A case
    that ROME keeps but this trace skipped (its top-1 token spells the target without the
    leading space) has no scores; :func:`rome_cases` counts them.
    """
    return str(tokenizer.decode([result.predicted_id])).strip() == result.target


def rome_cases(
    results: Sequence[TraceResult], tokenizer: transformers.PreTrainedTokenizerBase
) -> list[TraceResult]:
    """The traced results that ROME's filter keeps (:func:`answered_as_rome`); logs how many
    cases it would keep that were not traced here."""
    kept = [result for result in results if result.correct and answered_as_rome(result, tokenizer)]
    untraced = sum(not result.correct and answered_as_rome(result, tokenizer) for result in results)
    if untraced:
        logger.warning(
            "%d cases that ROME's filter keeps were not traced: their top token spells the "
            "target without its leading space, which this trace does not count as correct",
            untraced,
        )
    return kept


@dataclass
class AverageTrace(DataClassJsonMixin):
    """The mean indirect effect per token category and layer over the correct cases."""

    kind: str
    window: int
    num_cases: int
    categories: list[str]
    effects: list[list[float | None]]
    """``(categories, layers)``; None where no case has a token of that category."""
    clean_prob: float
    corrupted_prob: float
    pooling: str = "case"
    """How tokens were averaged (:data:`POOLINGS`, see :func:`average_trace`)."""


def average_trace(
    results: Sequence[TraceResult], kind: str, window: int, pooling: str = "case"
) -> AverageTrace:
    """Average the indirect effects of the ``correct`` results by token category and layer.

    ``pooling="case"`` (ours, the default): each case first averages its effects within a
    category (:func:`token_categories`, tokens before the subject among the further tokens),
    then the cases that have a token there are averaged, so that every case weighs the same in
    every row. ``"token"``: ROME's average
    (kmeng01/rome notebooks/average_causal_effects.ipynb:61-142): every token's restored
    probabilities are one row, pooled over all cases in ROME's rows
    (:func:`rome_category_positions`), less the mean corrupted probability of all the cases;
    a case then weighs as many rows as it has tokens in the middle-subject and further-token
    rows. (ROME's heatmap then clips the effects at 0, :210; these are not clipped.)

    Raises:
        errors.UsageError: No result is ``correct``, or an unknown ``pooling``.
    """
    if pooling not in POOLINGS:
        raise errors.UsageError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
    correct = [result for result in results if result.correct]
    if not correct:
        raise errors.UsageError("no correctly answered case to average; trace more cases")
    num_layers = correct[0].restored(kind, window).shape[1]
    average = _pool_tokens if pooling == "token" else _average_cases
    means = average(correct, kind, window, num_layers)
    effects_table: list[list[float | None]] = [
        row.tolist() if row is not None else [None] * num_layers for row in means
    ]
    return AverageTrace(
        kind=kind,
        window=window,
        num_cases=len(correct),
        categories=list(TOKEN_CATEGORIES),
        effects=effects_table,
        clean_prob=float(np.mean([r.clean_prob for r in correct])),
        corrupted_prob=float(np.mean([r.corrupted() for r in correct])),
        pooling=pooling,
    )


def _average_cases(
    results: Sequence[TraceResult], kind: str, window: int, num_layers: int
) -> list[np.ndarray | None]:
    """Each category's mean over the cases of each case's mean effect in it."""
    totals = np.zeros((len(TOKEN_CATEGORIES), num_layers))
    counts = np.zeros(len(TOKEN_CATEGORIES))
    for result in results:
        effects = result.indirect_effects(kind, window)
        categories = np.asarray(token_categories(result.subject_range, effects.shape[0]))
        for category in range(len(TOKEN_CATEGORIES)):
            rows = effects[categories == category]
            if len(rows):
                totals[category] += rows.mean(axis=0)
                counts[category] += 1
    return [totals[c] / counts[c] if counts[c] else None for c in range(len(TOKEN_CATEGORIES))]


def _pool_tokens(
    results: Sequence[TraceResult], kind: str, window: int, num_layers: int
) -> list[np.ndarray | None]:
    """ROME's: each category's mean restored probability over the tokens of all cases, less
    the mean corrupted probability of the cases."""
    pooled: list[list[np.ndarray]] = [[] for _ in TOKEN_CATEGORIES]
    for result in results:
        restored = result.restored(kind, window)
        positions = rome_category_positions(result.subject_range, restored.shape[0])
        for rows, category_positions in zip(pooled, positions, strict=True):
            rows.append(restored[category_positions].reshape(-1, num_layers))
    corrupted = np.mean([result.corrupted() for result in results])
    return [
        np.concatenate(rows).mean(axis=0) - corrupted if sum(map(len, rows)) else None
        for rows in pooled
    ]


KIND_COLORMAPS = {"residual": "Purples", "mlp": "Greens", "attn": "Reds"}
KIND_LABELS = {"residual": "residual stream", "mlp": "MLP output", "attn": "attention output"}


def plot_average_trace(average: AverageTrace, path: Path, title: str = "") -> Path:
    """ROME's average heatmap (kmeng01/rome notebooks/average_causal_effects.ipynb, its
    ``plot_array``): token categories down, layers across, indirect effect in color. ROME clips
    the effects at 0 and starts its color scale there (:210); this one spans the effects as
    they are, negative ones included."""
    plt = figures.pyplot()
    values = np.array(
        [[math.nan if v is None else v for v in row] for row in average.effects], dtype=float
    )
    figure, axes = plt.subplots(figsize=(max(3.5, 0.25 * values.shape[1] + 2.5), 2.4), dpi=150)
    image = axes.pcolormesh(values, cmap=KIND_COLORMAPS.get(average.kind, "Purples"))
    axes.invert_yaxis()
    axes.set_yticks([0.5 + i for i in range(len(average.categories))])
    axes.set_yticklabels(average.categories, fontsize=7)
    step = max(1, values.shape[1] // 8)
    axes.set_xticks([0.5 + i for i in range(0, values.shape[1], step)])
    axes.set_xticklabels([str(i) for i in range(0, values.shape[1], step)], fontsize=7)
    label = KIND_LABELS.get(average.kind, average.kind)
    axes.set_xlabel(f"layer of restored {label} (window {average.window})", fontsize=8)
    axes.set_title(title or f"Average indirect effect, {average.num_cases} cases", fontsize=8)
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.set_label("indirect effect on p(target)", fontsize=7)
    figure.tight_layout()
    return figures.save(figure, path)
