"""The comparison helper of computations equal in exact arithmetic (tests/numerics.py)."""

from __future__ import annotations

import pytest
import torch

from tests.model_fixtures import tiny_model
from tests.numerics import (
    TOLERANCES,
    assert_equal_in_exact_arithmetic,
    float_dtypes_used,
    precision_of,
    tolerance_for,
)


def test_a_float32_rounding_difference_fails_in_float64_and_passes_in_float32():
    exact = torch.linspace(-3, 3, 50, dtype=torch.float64)
    rounded = exact.float().double()  # float32 rounding: ~6e-8 relative
    assert not torch.equal(rounded, exact)
    assert_equal_in_exact_arithmetic(rounded, exact, torch.float32)
    with pytest.raises(AssertionError, match=r"run in torch.float64 at their lowest"):
        assert_equal_in_exact_arithmetic(rounded, exact, torch.float64)
    # A real difference fails at either precision.
    with pytest.raises(AssertionError):
        assert_equal_in_exact_arithmetic(exact * (1 + 1e-3), exact, torch.float32)


def test_python_floats_keep_their_float64_digits():
    value = 0.530500593989438
    assert_equal_in_exact_arithmetic(value, value * (1 + 1e-12), torch.float64)
    with pytest.raises(AssertionError):
        assert_equal_in_exact_arithmetic(value, value * (1 + 1e-8), torch.float64)
    expected = torch.tensor([value, 1.0], dtype=torch.float64)
    assert_equal_in_exact_arithmetic([value, 1.0], expected, torch.float64)


def test_scale_judges_a_difference_of_large_numbers_on_their_magnitude():
    big = 1000.0
    difference = (big + 0.5) - big
    assert_equal_in_exact_arithmetic(difference + 1e-9, 0.5, torch.float64, scale=big)
    with pytest.raises(AssertionError):
        assert_equal_in_exact_arithmetic(difference + 1e-9, 0.5, torch.float64)


def test_every_float_dtype_has_a_tolerance_ordered_by_precision():
    order = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    rtols = [tolerance_for(dtype).rtol for dtype in order]
    assert rtols == sorted(rtols)
    for dtype in order:
        assert TOLERANCES[dtype].rtol > torch.finfo(dtype).eps
    with pytest.raises(ValueError, match=r"no tolerance for torch\.int64"):
        tolerance_for(torch.int64)


def test_the_recorder_sees_a_float32_island_inside_a_float64_computation():
    x = torch.randn(4, 4, dtype=torch.float64)
    used = float_dtypes_used(lambda: torch.softmax(x.float(), -1).double() @ x)
    assert "aten._softmax.default" in used[torch.float32]
    assert "aten.mm.default" in used[torch.float64]
    assert set(float_dtypes_used(lambda: x @ x)) == {torch.float64}


def test_precision_of_a_model_is_its_lowest():
    assert precision_of(tiny_model("gpt2").double()) == torch.float64
    assert precision_of(tiny_model("gpt_neo").double()) == torch.float32
    assert precision_of(tiny_model("gpt2")) == torch.float32
