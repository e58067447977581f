"""The ``shared_data`` marker: skipped without the real data folder, mandatory when CI asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SHARED_DATA, shared_data_verdict

INNER_TESTS = """
import pytest


@pytest.mark.shared_data
def test_reads_the_real_files():
    pass


def test_needs_no_data():
    pass
"""


def test_verdict_skips_without_the_folder_and_fails_when_required(tmp_path: Path):
    missing = tmp_path / "no-shared-data"
    action, reason = shared_data_verdict(missing, required=False) or ("run", "")
    assert action == "skip"
    assert "REMEDI_SHARED_DATA" in reason and str(missing) in reason
    action, reason = shared_data_verdict(missing, required=True) or ("run", "")
    assert action == "fail"
    assert f"{REQUIRE_SHARED_DATA}=1" in reason and "REMEDI_SHARED_DATA" in reason
    assert shared_data_verdict(tmp_path, required=False) is None
    assert shared_data_verdict(tmp_path, required=True) is None


def _run_inner_session(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    shared_data: Path,
    require: str | None,
) -> pytest.RunResult:
    """Run two tests, one marked shared_data, under this suite's conftest hook."""
    pytester.makeconftest("from tests.conftest import pytest_runtest_setup  # noqa: F401\n")
    pytester.makeini("[pytest]\nmarkers =\n    shared_data: needs the real data files\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    monkeypatch.setenv("REMEDI_SHARED_DATA", str(shared_data))
    if require is None:
        monkeypatch.delenv(REQUIRE_SHARED_DATA, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_SHARED_DATA, require)
    return pytester.runpytest_inprocess("-rsE", "-p", "no:cacheprovider")


def test_a_researcher_without_the_folder_gets_a_skip_naming_the_variable(pytester, monkeypatch):
    result = _run_inner_session(pytester, monkeypatch, pytester.path / "absent", require=None)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*set REMEDI_SHARED_DATA*"])


def test_ci_without_the_folder_fails(pytester, monkeypatch):
    result = _run_inner_session(pytester, monkeypatch, pytester.path / "absent", require="1")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_reads_the_real_files*",
            f"shared data folder * is missing and {REQUIRE_SHARED_DATA}=1 makes the shared_data "
            "tests mandatory; set REMEDI_SHARED_DATA *",
        ]
    )
    assert result.ret != 0


@pytest.mark.parametrize("require", [None, "1"])
def test_with_the_folder_the_tests_run(pytester, monkeypatch, require):
    result = _run_inner_session(pytester, monkeypatch, pytester.path, require=require)
    result.assert_outcomes(passed=2)
