"""Comparing two computations that are equal in exact arithmetic.

A batch and its rows one by one, a cached forward pass and a plain one, the fast REMEDI loss and
its definition: each pair computes the same function in another order, so the two results
differ by rounding only. How much rounding depends on the lowest precision the computation
really runs in, which is not always the dtype of its inputs: several model families compute
parts of a float64 model in float32 (``remedi.models.ModelFamily.float32_inside``, measured by
:func:`float_dtypes_used`). Which digits differ depends on the CPU's kernels (PyTorch picks
them by ``ATEN_CPU_CAPABILITY``), so a tolerance below that precision's rounding passes on one
machine by luck and fails on another. Every such comparison goes through
:func:`assert_equal_in_exact_arithmetic`, with the precision from :func:`precision_of`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from remedi import models


@dataclass(frozen=True)
class Tolerance:
    """Relative tolerance of an elementwise comparison; ``atol`` is ``rtol`` times the largest
    magnitude of the expected values, so entries near zero are judged on the tensor's scale."""

    rtol: float
    why: str


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(
        1e-10,
        "float64 rounding (eps 2.2e-16) accumulated over a tiny model's few thousand operations "
        "stays below 1e-13 in every comparison of this suite (measured); 1e-10 leaves a margin "
        "and is still a million times tighter than float32 rounding",
    ),
    torch.float32: Tolerance(
        2e-5,
        "float32 rounding (eps 1.2e-7): the float32 islands of a float64 family moved logits by "
        "up to 1.9e-7 and losses by up to 1.7e-9 relative on other CPUs' kernels; a float32 "
        "model's batch and single passes differ by a few ulps per logit, which subtracted "
        "log-probabilities can grow tenfold",
    ),
    torch.bfloat16: Tolerance(2e-2, "bfloat16 rounding (eps 7.8e-3)"),
    torch.float16: Tolerance(5e-3, "float16 rounding (eps 9.8e-4)"),
}


def precision_of(model: torch.nn.Module | models.ModelAndTokenizer) -> torch.dtype:
    """The lowest precision ``model`` computes in (see remedi.models.computation_precision)."""
    return models.computation_precision(model)


def tolerance_for(precision: torch.dtype) -> Tolerance:
    """The tolerance of a comparison whose lowest precision is ``precision``."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance for {precision}; add it to TOLERANCES") from None


def assert_equal_in_exact_arithmetic(
    actual: torch.Tensor | float | Any,
    expected: torch.Tensor | float | Any,
    precision: torch.dtype,
    *,
    scale: float | None = None,
) -> None:
    """Assert that two results of computations equal in exact arithmetic agree to the rounding
    of ``precision``, the lowest precision either computation really runs in.

    Tensors (or anything ``torch.as_tensor`` takes, floats included) are compared elementwise
    with the precision's relative tolerance, and with an absolute tolerance of that times
    ``scale`` (default: the largest magnitude in ``expected``).
    """
    actual_tensor, expected_tensor = _as_float64(actual), _as_float64(expected)
    tolerance = tolerance_for(precision)
    if scale is None:
        scale = float(expected_tensor.abs().max()) if expected_tensor.numel() else 0.0
    torch.testing.assert_close(
        actual_tensor,
        expected_tensor,
        rtol=tolerance.rtol,
        atol=tolerance.rtol * scale,
        msg=lambda message: (
            f"{message}\nThe computations agree in exact arithmetic and run in {precision} at "
            f"their lowest; the tolerance ({tolerance.rtol:g}) is {tolerance.why}."
        ),
    )


def _as_float64(values: torch.Tensor | float | Any) -> torch.Tensor:
    """``values`` as a float64 tensor; Python floats (float64) are never rounded to float32 on
    the way, as ``torch.as_tensor`` would with its default dtype."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64)
    return torch.tensor(values, dtype=torch.float64)


class _DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every floating-point tensor each operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: dict[torch.dtype, set[str]] = collections.defaultdict(set)

    def __torch_dispatch__(  # type: ignore[override]
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        outputs = func(*args, **(kwargs or {}))
        for output in outputs if isinstance(outputs, tuple | list) else (outputs,):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                self.operations[output.dtype].add(str(func))
        return outputs


def float_dtypes_used(computation: Callable[[], Any]) -> dict[torch.dtype, set[str]]:
    """Run ``computation`` and return, per floating-point dtype, the operations that produced
    a tensor of that dtype: what the computation really computes in, whatever its inputs'."""
    recorder = _DtypeRecorder()
    with recorder:
        computation()
    return dict(recorder.operations)
