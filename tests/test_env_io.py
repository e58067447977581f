"""Paths come from the environment; writes are atomic; bad JSON fails with a clear message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from remedi import env, io


def test_paths_follow_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("REMEDI_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "d"))
    assert env.results_dir() == tmp_path / "r"
    assert env.models_dir() == tmp_path / "m"
    assert env.data_dir() == tmp_path / "d"


def test_paths_default_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for variable in ("REMEDI_RESULTS_DIR", "REMEDI_MODELS_DIR", "REMEDI_DATA_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("REMEDI_HOME", str(tmp_path))
    assert env.results_dir() == tmp_path / "results"
    assert env.models_dir() == tmp_path / "models"
    assert env.data_dir() == tmp_path / "data"


def test_write_json_round_trips_and_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "deep" / "result.json"
    io.write_json(path, {"efficacy": 0.5, "n": [1, 2]})
    assert io.read_json(path) == {"efficacy": 0.5, "n": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_crash_mid_write_keeps_the_old_file(tmp_path: Path):
    path = tmp_path / "result.json"
    io.write_json(path, {"complete": True})

    def crash(tmp: Path) -> None:
        tmp.write_text('{"complete": fal')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_read_json_names_the_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"editor config not found: .*nope\.json"):
        io.read_json(tmp_path / "nope.json", what="editor config")


def test_read_json_names_the_malformed_file_and_position(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON \(line 2"):
        io.read_json(path)


def test_written_files_get_the_usual_permissions(tmp_path: Path):
    path = tmp_path / "result.json"
    io.write_json(path, {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overridden_sets_and_restores_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("REMEDI_MODELS_DIR", "/somewhere")
    monkeypatch.delenv("REMEDI_DATA_DIR", raising=False)
    with env.overridden(REMEDI_MODELS_DIR=tmp_path / "m", REMEDI_DATA_DIR=tmp_path / "d"):
        assert env.models_dir() == (tmp_path / "m").resolve()
        assert env.data_dir() == (tmp_path / "d").resolve()
    assert os.environ["REMEDI_MODELS_DIR"] == "/somewhere"
    assert "REMEDI_DATA_DIR" not in os.environ
    with pytest.raises(RuntimeError), env.overridden(REMEDI_DATA_DIR=tmp_path):
        raise RuntimeError("restored even on error")
    assert "REMEDI_DATA_DIR" not in os.environ
