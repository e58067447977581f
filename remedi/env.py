"""Where remedi reads and writes files: one place, environment variables with defaults.

Every path the workbench uses comes from a function here, read at call time so that tests
and users can redirect it with an environment variable:

- ``REMEDI_HOME``: the project root (default: the repository this package lives in, else
  the current directory).
- ``REMEDI_RESULTS_DIR``: experiment outputs (default ``$REMEDI_HOME/results``).
- ``REMEDI_LOGS_DIR``: one log file per script run (default ``$REMEDI_RESULTS_DIR/logs``).
- ``REMEDI_MODELS_DIR``: built toy models and local model copies (default ``$REMEDI_HOME/models``).
- ``REMEDI_DATA_DIR``: datasets, downloaded or generated (default ``$REMEDI_HOME/data``).
- ``REMEDI_SHARED_DATA``: real public data files used by tests and benchmarks
  (default ``$REMEDI_HOME/../shared/data``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def home_dir() -> Path:
    """Return the project root: ``$REMEDI_HOME``, the source checkout, or the cwd."""
    if "REMEDI_HOME" in os.environ:
        return Path(os.environ["REMEDI_HOME"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout
    return Path.cwd()


def _dir_from_env(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser().resolve() if value else default


def results_dir() -> Path:
    """Return the directory under which each experiment writes ``<name>/``."""
    return _dir_from_env("REMEDI_RESULTS_DIR", home_dir() / "results")


def logs_dir() -> Path:
    """Return the directory of the scripts' log files (one per run, see remedi.cli)."""
    return _dir_from_env("REMEDI_LOGS_DIR", results_dir() / "logs")


def models_dir() -> Path:
    """Return the directory holding built toy models and local model copies."""
    return _dir_from_env("REMEDI_MODELS_DIR", home_dir() / "models")


def data_dir() -> Path:
    """Return the directory holding datasets (generated, downloaded, or copied in)."""
    return _dir_from_env("REMEDI_DATA_DIR", home_dir() / "data")


def shared_data_dir() -> Path:
    """Return the directory of real public data files for tests and benchmarks."""
    return _dir_from_env("REMEDI_SHARED_DATA", home_dir().parent / "shared" / "data")


@contextlib.contextmanager
def overridden(**variables: str | Path) -> Iterator[None]:
    """Set environment variables (e.g. ``REMEDI_MODELS_DIR=...``) while inside; restore after.

    Functions here read the environment at call time, and subprocesses started inside inherit
    it, so this redirects everything the block runs.
    """
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update({key: str(value) for key, value in variables.items()})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
