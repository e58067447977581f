"""A built small toy world shared by the tests of a session.

In a test module::

    from tests.toy_fixtures import BuiltToyWorld, shared_small_world

    @pytest.fixture(scope="session")
    def small_world(tmp_path_factory: pytest.TempPathFactory) -> BuiltToyWorld:
        return shared_small_world(tmp_path_factory)

(or register this module with ``pytest_plugins`` in conftest and use its ``small_world``).
The world is built once per test session into a temporary directory, however many modules ask
for it; the environment variables are set only while building, so use :func:`toy_dirs` to point
``remedi.env`` at it again inside a test.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remedi import env
from remedi.toy.build import ToyWorldPaths, ensure_toy_world, read_build_report


@dataclass(frozen=True)
class BuiltToyWorld:
    paths: ToyWorldPaths
    models_dir: Path
    data_dir: Path
    report: dict[str, Any]
    build_seconds: float


def toy_dirs(models_dir: Path, data_dir: Path) -> AbstractContextManager[None]:
    """Set REMEDI_MODELS_DIR and REMEDI_DATA_DIR for the duration of the block."""
    return env.overridden(REMEDI_MODELS_DIR=models_dir, REMEDI_DATA_DIR=data_dir)


_BUILT: dict[str, BuiltToyWorld] = {}


def shared_small_world(tmp_path_factory: pytest.TempPathFactory) -> BuiltToyWorld:
    """The "toy-small" world (default config, seed 0), built once per session in a temp dir."""
    if "toy-small" not in _BUILT:
        root = tmp_path_factory.mktemp("toy-small-world")
        models_dir, data_dir = root / "models", root / "data"
        with toy_dirs(models_dir, data_dir):
            start = time.monotonic()
            paths = ensure_toy_world("toy-small", seed=0)
            seconds = time.monotonic() - start
            report = read_build_report("toy-small")
        _BUILT["toy-small"] = BuiltToyWorld(paths, models_dir, data_dir, report, seconds)
    return _BUILT["toy-small"]


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> BuiltToyWorld:
    """The "toy-small" world, built with its default config and seed 0 in a temporary directory."""
    return shared_small_world(tmp_path_factory)
