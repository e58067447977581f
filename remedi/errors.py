"""The errors a user can fix: each names what was wrong and what to do about it.

Every expected error of the workbench derives from :class:`RemediError`, so the command-line
doors (:mod:`remedi.cli`) can tell them from bugs: they print an expected error as one message
and keep the traceback for ``--debug`` and the log file. Each class also keeps the built-in base
that callers caught before (``ValueError``, ``FileNotFoundError``, ``KeyError``), so
``except ValueError`` still works. Other modules add their own (``models.ModelLoadError``,
``data.DatasetFormatError``). This module imports nothing from remedi: any module may raise these.
"""

from __future__ import annotations


class RemediError(Exception):
    """An error caused by the input or the environment, not by a bug; its message says the fix."""


class UsageError(RemediError, ValueError):
    """An argument has a value that cannot work: a layer out of range, an unknown name, ..."""


class MissingFileError(RemediError, FileNotFoundError):
    """A file the caller named, or an earlier step should have written, is not there."""


class FileFormatError(RemediError, ValueError):
    """A file exists but does not hold what it should (malformed JSON, a foreign format)."""


class MismatchError(RemediError, ValueError):
    """Saved state was made with other settings than those asked for (a run, an editor, ...)."""


class UnknownIdError(MismatchError, KeyError):
    """Ids asked for are not in the data, e.g. a run's split read against another dataset file."""

    def __str__(self) -> str:
        # KeyError's own __str__ would print the message in quotes, like a missing dict key.
        return Exception.__str__(self)


class SampleError(RemediError, ValueError):
    """A sample cannot be used as given: its entity is not in its prompt, it was truncated, ..."""
