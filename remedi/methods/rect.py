"""RECT (Gu et al. 2024) and the paper's two baselines: regularising a weight update.

Each regulariser takes a weight's value before (``old``) and after (``new``) an edit and returns
a new value whose update ``delta = new - old`` keeps only part of the edit, ``share`` of it:

- ``rect``: the entries whose relative change ``|delta_ij| / |old_ij|`` is among the top
  ``share`` of the matrix are kept, the others zeroed (the paper's RECT);
- ``random``: a random ``share`` of the entries is kept, the others zeroed (the paper's first
  baseline, "random zeroing of 80%" at the default share);
- ``pca``: the update is replaced by its reconstruction from its top principal components, as
  many as ``share`` of its smaller dimension (the paper's second baseline).

They apply to the output of any weight-editing method (a dict of new weight values by parameter
name) and are pure functions of the weights (``random`` of a seeded generator too).

Against the reference (JasonForJoy/Model-Editing-Hurt, ``easyeditor/models/rome/rome_main.py``,
where all three sit in a commented-out block of ``apply_rome_to_model``, lines 71-88, for ROME
only):

- RECT zeroes the ``int(0.8 n)`` entries of smallest ``|delta / w|`` (lines 26-33, 77-79), i.e.
  keeps ``n - floor(0.8 n) = ceil(0.2 n)`` as here; ties at the threshold are kept here (their
  ``argpartition`` breaks them arbitrarily). Its helper returns nothing (line 33), so the line
  that calls it would write None: the authors' run cannot have used it as shipped.
- Random zeroing there draws each entry's fate independently (``torch.rand < 0.8``, lines
  20-23, 74; unseeded), so the kept share is 20% in expectation; here exactly ``ceil(share n)``
  entries are kept, the count RECT keeps, from a seeded generator. On a real update (GPT-2 XL's
  6400 x 1600) the reference's share varies by about 1e-4 around 20%.
- PCA there fits scikit-learn's ``PCA(n_components=320)`` to the update in the weight's layout
  (rows as samples) and writes the 320 *component scores* into the first 320 columns of a zero
  matrix of GPT-2 XL's hard-coded shape (lines 82-87): not the update's reconstruction, and not
  in the weight's coordinates. Here the update is reconstructed from those components (what
  ``inverse_transform`` gives: rank-``k`` approximation of the row-centred update plus its row
  mean), with ``k = ceil(share * min(rows, cols))`` (320 = 0.2 x 1600 for GPT-2 XL). A ROME
  update has rank one, so PCA keeps it whole at any share (MEMIT's batch update: whenever the
  batch is no larger than ``k``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping

import torch

from remedi import errors

DEFAULT_SHARE = 0.2
"""The paper's default: 20% of each update is kept (the top 20% of entries for RECT)."""

Regularizer = Callable[[torch.Tensor, torch.Tensor, float, torch.Generator | None], torch.Tensor]
"""``(old, new, share, generator) -> regularised new``; only ``random`` uses the generator."""


def _update(old: torch.Tensor, new: torch.Tensor, share: float, name: str) -> torch.Tensor:
    """``new - old`` in float32 (float64 for float64 weights), after checking ``share`` and the
    shapes."""
    if not 0 < share <= 1:
        raise errors.UsageError(f"{name} share must be in (0, 1], got {share}")
    if old.shape != new.shape:
        raise errors.UsageError(
            f"{name} needs the old and new weights in one shape, got {tuple(old.shape)} and "
            f"{tuple(new.shape)}"
        )
    dtype = torch.promote_types(new.dtype, torch.float32)
    return new.to(dtype) - old.to(dtype)


def kept_count(numel: int, share: float) -> int:
    """Entries kept of ``numel`` at ``share``: ``ceil(share * numel)``, at least one."""
    return max(1, math.ceil(share * numel))


def regularize(
    old: torch.Tensor,
    new: torch.Tensor,
    share: float = DEFAULT_SHARE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RECT: ``old + delta * mask`` where ``mask`` keeps the top ``share`` of entries by
    ``|delta| / |old|`` (ties at the threshold are kept; an entry with ``old == 0`` and a
    non-zero change ranks first). ``generator`` is unused (the interface of every regulariser).

    Raises:
        errors.UsageError: ``share`` outside ``(0, 1]`` or shapes differ.
    """
    delta = _update(old, new, share, "RECT")
    relative = delta.abs() / old.to(delta.dtype).abs()  # inf where old is 0 and delta is not
    relative = torch.nan_to_num(relative, nan=0.0)
    threshold = torch.topk(relative.flatten(), kept_count(relative.numel(), share)).values[-1]
    # A kept entry takes its new value, the others their old one (old + delta * mask, exactly).
    return torch.where(relative >= threshold, new, old.to(new.dtype))


def random_zeroing(
    old: torch.Tensor,
    new: torch.Tensor,
    share: float = DEFAULT_SHARE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``old + delta * mask`` where ``mask`` keeps exactly ``ceil(share * n)`` entries drawn
    uniformly without replacement from ``generator`` (the paper's random baseline).

    Raises:
        errors.UsageError: ``share`` outside ``(0, 1]`` or shapes differ.
    """
    delta = _update(old, new, share, "random zeroing")
    chosen = torch.randperm(delta.numel(), generator=generator)[: kept_count(delta.numel(), share)]
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[chosen] = True
    return torch.where(mask.reshape(delta.shape).to(new.device), new, old.to(new.dtype))


def pca_rank(shape: torch.Size, share: float) -> int:
    """Principal components kept of an update of ``shape``: ``ceil(share * min(rows, cols))``
    (a vector counts as one column)."""
    rows = shape[0] if len(shape) else 1
    columns = math.prod(shape[1:]) if len(shape) > 1 else 1
    return kept_count(min(rows, columns), share)


def principal_components(
    old: torch.Tensor,
    new: torch.Tensor,
    share: float = DEFAULT_SHARE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``old`` plus the update reconstructed from its top :func:`pca_rank` principal
    components: rows are samples (in the weight's own layout), centred on their mean, which is
    added back (scikit-learn's ``PCA.inverse_transform(PCA.fit_transform(delta))``).
    ``generator`` is unused.

    Raises:
        errors.UsageError: ``share`` outside ``(0, 1]`` or shapes differ.
    """
    delta = _update(old, new, share, "PCA")
    matrix = delta.reshape(delta.shape[0], -1) if delta.dim() else delta.reshape(1, 1)
    mean = matrix.mean(dim=0, keepdim=True)
    left, singular, right = torch.linalg.svd(matrix - mean, full_matrices=False)
    rank = pca_rank(delta.shape, share)
    kept = (left[:, :rank] * singular[:rank]) @ right[:rank] + mean
    return (old.to(delta.dtype) + kept.reshape(delta.shape)).to(new.dtype)


REGULARIZERS: dict[str, Regularizer] = {
    "rect": regularize,
    "random": random_zeroing,
    "pca": principal_components,
}
"""Every regulariser by name (``rect`` is the paper's method, the others its baselines)."""

LABELS = {"rect": "RECT", "random": "Random", "pca": "PCA"}


def regularizer(name: str) -> Regularizer:
    """The regulariser ``name``.

    Raises:
        errors.UsageError: No such regulariser; the message lists them.
    """
    if name not in REGULARIZERS:
        raise errors.UsageError(
            f"unknown regulariser {name!r}; choose one of {', '.join(REGULARIZERS)}"
        )
    return REGULARIZERS[name]


def weight_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (e.g. the edit's index and the weight's
    name), the same in every process, so a resumed run draws what an unbroken one would."""
    text = "/".join(str(part) for part in (seed, *keys))
    return torch.Generator().manual_seed(zlib.crc32(text.encode()))


def regularize_weights(
    old: Mapping[str, torch.Tensor],
    new: Mapping[str, torch.Tensor],
    share: float = DEFAULT_SHARE,
    method: str = "rect",
    seed: int = 0,
    draw: int = 0,
) -> dict[str, torch.Tensor]:
    """Regulariser ``method`` on every weight a method returned (``new``), against ``old`` by
    name; ``random`` draws from :func:`weight_generator` of ``seed``, ``draw`` (which update
    this is, e.g. the edit's index) and the weight's name."""
    apply = regularizer(method)
    missing = [name for name in new if name not in old]
    if missing:
        raise errors.UsageError(
            f"{LABELS[method]} has no old value for weight(s) {', '.join(missing)}"
        )
    return {
        name: apply(old[name], value, share, weight_generator(seed, draw, name))
        for name, value in new.items()
    }
