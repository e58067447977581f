"""remedi: a workbench for inspecting and editing the knowledge representations of LMs.

Data flows one way through the package:
``models`` -> ``data`` -> ``precompute`` -> ``editors``/``training`` -> ``evaluation`` ->
``report`` -> results on disk.
A lower module never imports a higher one.

The one-call API (:mod:`remedi.api`) is importable from here: ``remedi.load(editor=...)``
returns a :class:`~remedi.api.Workbench` that edits, generates and probes. It is imported on
first use, so ``import remedi`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AttributeScore",
    "EditResult",
    "ProbeResult",
    "TargetProbability",
    "TokenProbability",
    "Workbench",
    "__version__",
    "load",
]
_API_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from remedi.api import (
        AttributeScore,
        EditResult,
        ProbeResult,
        TargetProbability,
        TokenProbability,
        Workbench,
        load,
    )


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from remedi import api

        return getattr(api, name)
    raise AttributeError(f"module 'remedi' has no attribute {name!r}")
