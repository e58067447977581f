"""RECT (Gu et al. 2024): keep only the largest relative changes of a weight update.

For an update ``delta = new - old`` of a weight ``old``, the relative change of entry ``ij`` is
``|delta_ij| / |old_ij|``. RECT keeps the entries whose relative change is among the top
``share`` of the matrix and zeroes the rest, so that an edit touches few weights and those it
touches matter most for the edited fact. It applies to the output of any weight-editing method
(a dict of new weight values by parameter name); it is a pure function of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from remedi import errors

DEFAULT_SHARE = 0.2
"""The paper's default: the top 20% of entries by relative change are kept."""


def regularize(old: torch.Tensor, new: torch.Tensor, share: float = DEFAULT_SHARE) -> torch.Tensor:
    """``old + delta * mask`` where ``mask`` keeps the top ``share`` of entries by
    ``|delta| / |old|`` (ties at the threshold are kept; an entry with ``old == 0`` and a
    non-zero change ranks first).

    Raises:
        errors.UsageError: ``share`` outside ``(0, 1]`` or shapes differ.
    """
    if not 0 < share <= 1:
        raise errors.UsageError(f"RECT share must be in (0, 1], got {share}")
    if old.shape != new.shape:
        raise errors.UsageError(
            f"RECT needs the old and new weights in one shape, got {tuple(old.shape)} and "
            f"{tuple(new.shape)}"
        )
    delta = new.float() - old.float()
    relative = delta.abs() / old.float().abs()  # inf where old is 0 and delta is not
    relative = torch.nan_to_num(relative, nan=0.0)
    keep_count = max(1, math.ceil(share * relative.numel()))
    threshold = torch.topk(relative.flatten(), keep_count).values[-1]
    mask = relative >= threshold
    return (old.float() + delta * mask).to(new.dtype)


def regularize_weights(
    old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], share: float = DEFAULT_SHARE
) -> dict[str, torch.Tensor]:
    """:func:`regularize` on every weight a method returned (``new``), against ``old`` by name."""
    missing = [name for name in new if name not in old]
    if missing:
        raise errors.UsageError(f"RECT has no old value for weight(s) {', '.join(missing)}")
    return {name: regularize(old[name], value, share) for name, value in new.items()}
