"""The parity harness's reference loader (benchmarks/parity/reference.py): it patches a release's
source at import time, exactly as stated, and leaves no trace of the release behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmarks.parity import reference
from benchmarks.parity.setup import relative_difference


def _release(root: Path) -> Path:
    package = root / "fakeref"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('NAME = "cuda"\n')
    (package / "device.py").write_text('DEVICE = "cuda"\nOTHER = "cuda"\n')
    return root


def test_patched_module_runs_with_the_replacement_and_is_gone_after(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref.device": [reference.cuda_to_cpu(2)]}
    with reference.reference_modules(root, ["fakeref"], patches, required=["fakeref/device.py"]):
        module = reference.load("fakeref.device")
        assert (module.DEVICE, module.OTHER) == ("cpu", "cpu")
    assert "fakeref" not in sys.modules and "fakeref.device" not in sys.modules
    assert str(root) not in sys.path


def test_a_package_init_is_patched_and_its_submodules_import(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref": [reference.cuda_to_cpu(1)]}
    with reference.reference_modules(root, ["fakeref"], patches):
        assert reference.load("fakeref").NAME == "cpu"
        assert reference.load("fakeref.device").DEVICE == "cuda"  # not patched: not listed


def test_a_patch_that_no_longer_matches_the_checkout_fails(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref.device": [reference.cuda_to_cpu(3)]}
    with (
        reference.reference_modules(root, ["fakeref"], patches),
        pytest.raises(reference.ReferenceCheckoutError, match="occurs 2 times"),
    ):
        reference.load("fakeref.device")


def test_a_folder_that_is_not_the_release_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(reference.ReferenceCheckoutError, match=r"rome_main\.py is missing"),
        reference.reference_modules(tmp_path, ["rome"], {}, required=["rome/rome_main.py"]),
    ):
        pass


def test_a_release_package_named_like_ours_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(reference.ReferenceCheckoutError, match="own process"),
        reference.reference_modules(tmp_path, ["remedi"], {}),
    ):
        pass


def test_relative_difference_is_the_frobenius_ratio() -> None:
    reference_value = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert relative_difference(
        reference_value + torch.tensor([[0.5, 0.0], [0.0, 0.0]]), reference_value
    ) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_difference(torch.zeros(2), reference_value)
