"""The invoke tasks are real entry points: they list well and fail with instructions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_shows_the_gate_and_the_experiments():
    listing = run_invoke("--list")
    assert listing.returncode == 0, listing.stderr
    for name in (
        "install",
        "presubmit.lint",
        "presubmit.mypy",
        "presubmit.pytest",
        "x.toy.build",
        "x.train.counterfact",
        "x.eval.gen.counterfact",
        "x.quickstart",
    ):
        assert name in listing.stdout


def test_eval_without_trained_editors_names_the_command_to_run(tmp_path: Path):
    result = run_invoke(
        "x.eval.gen.counterfact", "--model", "gpt2", env={"REMEDI_RESULTS_DIR": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "no trained editors for model 'gpt2'" in result.stderr
    assert "invoke x.train.counterfact --model gpt2" in result.stderr


def test_train_with_unknown_model_and_no_layer_asks_for_one(tmp_path: Path):
    result = run_invoke(
        "x.train.counterfact",
        "--model",
        "my-org/new-model",
        env={"REMEDI_RESULTS_DIR": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "pass --layer N" in result.stderr
