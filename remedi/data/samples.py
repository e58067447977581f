"""What a sample is, and the helpers every dataset loader shares.

A *context mediation sample* (REMEDI's unit of training and evaluation) says: in ``prompt``,
``entity`` should behave as if ``context`` (a sentence stating ``attribute`` about it) were true,
so the LM should now continue the prompt with ``target_mediated`` instead of
``target_unmediated``. Loaders return samples as a ``datasets.Dataset`` with
:data:`SAMPLE_FEATURES` (one column per field of :class:`ContextMediationSample`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypedDict

import datasets

from remedi import errors, io

logger = logging.getLogger(__name__)

# The attribute is the context after the entity, without connecting punctuation.
_ATTRIBUTE_STRIP = ",-;: "


class ContextMediationSample(TypedDict):
    """One sample: in ``prompt``, ``entity`` should behave as if ``context`` were true."""

    id: str  # "counterfact/1234"
    source: str  # the dataset it came from, e.g. "counterfact"
    entity: str  # "Danielle Darrieux"
    prompt: str  # "Danielle Darrieux, a native"
    context: str  # "The mother tongue of Danielle Darrieux is English"
    attribute: str  # "is English"
    target_mediated: str | None  # "English": what the edited LM should say
    target_unmediated: str | None  # "French": what the LM said before


SAMPLE_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "entity": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "context": datasets.Value("string"),
        "attribute": datasets.Value("string"),
        "target_mediated": datasets.Value("string"),
        "target_unmediated": datasets.Value("string"),
    }
)


class DatasetFormatError(errors.FileFormatError):
    """A data file is not in the format its loader reads."""


def check_header(
    file: Path, header: Sequence[str] | None, columns: Sequence[str], expected: str
) -> None:
    """Raise a :class:`DatasetFormatError` naming the ``columns`` that ``file``'s ``header``
    lacks; ``expected`` tells what the file should be."""
    missing = [column for column in columns if column not in (header or [])]
    if missing:
        raise DatasetFormatError(
            f"{file}, row 1 (header): missing column(s) {', '.join(missing)}; {expected}"
        )


def attribute_from_context(context: str, entity: str) -> str:
    """Return what ``context`` says about ``entity``: the text after its last mention."""
    return context.split(entity)[-1].strip(_ATTRIBUTE_STRIP)


def samples_dataset(samples: list[ContextMediationSample]) -> datasets.Dataset:
    """Samples as a ``datasets.Dataset`` with :data:`SAMPLE_FEATURES`."""
    return datasets.Dataset.from_list(list(map(dict, samples)), features=SAMPLE_FEATURES)


def read_json_list(file: Path, what: str) -> list[Any]:
    """Read ``file``, which must hold a JSON list of records (``what`` names it in errors)."""
    data = io.read_json(file, what)
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{what} {file} must hold a JSON list of records, but its top level is a "
            f"{type(data).__name__}; is this the right file?"
        )
    return data


def raise_bad_record(
    file: Path, what: str, index: int, record: Any, problem: str, hint: str
) -> NoReturn:
    """Raise :class:`DatasetFormatError` naming the file, the record and what to do."""
    snippet = json.dumps(record)[:300]
    raise DatasetFormatError(
        f"{file} is not {what}: record {index} {problem}. Record {index}: {snippet}. {hint}"
    )


def log_dropped(file: Path, total: int, dropped: Mapping[str, int]) -> None:
    """Warn how many of ``total`` records of ``file`` were dropped, and why."""
    if dropped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items()))
        logger.warning(
            "dropped %d of %d records of %s that cannot be used (%s)",
            sum(dropped.values()),
            total,
            file,
            reasons,
        )
