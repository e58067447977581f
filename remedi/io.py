"""Small, safe file helpers: atomic writes and JSON reads that fail with a clear message."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from remedi import errors


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename.

    A crash mid-write leaves either the old file or no file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        # mkstemp creates files readable by the owner only; give results the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_safetensors(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` (contiguous, on the CPU) as a safetensors file, atomically."""
    import safetensors.torch

    atomic_write(
        path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    )


def file_sha256(file: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (read 1 MiB at a time)."""
    digest = hashlib.sha256()
    with Path(file).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(Path(path), write)


def read_json(path: Path, what: str = "JSON file") -> Any:
    """Read JSON from ``path``; a missing or malformed file raises an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise errors.FileFormatError(
            f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg}); re-create or re-download it"
        ) from error
