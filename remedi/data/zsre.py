"""zsRE edit requests in MEND's format, with EasyEdit's portability probes where present.

A record reads ``{"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans",
"cond"}`` (``src`` asks about ``subject``; ``alt`` is the new answer, ``answers`` the true ones;
``loc``/``loc_ans`` an unrelated NQ question for locality) and optionally
``"portability": {"Recalled Relation", "New Question", "New Answer"}`` (a question whose answer
follows from the edited fact). Both the 1k training file and the harms paper's evaluation file
with portability probes (``zsre_mend_eval_portability_gpt4.json``) have this layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io

logger = logging.getLogger(__name__)

ZSRE_REQUIRED_FIELDS = ("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")
"""Fields every MEND-format zsRE record must have (``pred`` and ``cond`` are optional)."""

PORTABILITY_FIELDS = ("New Question", "New Answer")


@dataclass(frozen=True)
class ZsreEdit(DataClassJsonMixin):
    """One zsRE edit: after ``prompt`` (about ``subject``) the model should answer ``target_new``."""

    case_id: int
    subject: str
    prompt: str
    target_new: str
    target_true: str
    rephrase_prompt: str
    locality_prompt: str
    locality_answer: str
    portability_prompt: str = ""
    portability_answer: str = ""


def _row_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not an object"
    missing = [name for name in ZSRE_REQUIRED_FIELDS if name not in record]
    if missing:
        return f"misses column(s) {', '.join(missing)}"
    for name in ZSRE_REQUIRED_FIELDS:
        value = record[name]
        if name == "answers":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return "has 'answers' that is not a list of strings"
        elif not isinstance(value, str):
            return f"has a non-string {name!r}"
    portability = record.get("portability")
    if portability is not None and (
        not isinstance(portability, dict)
        or any(not isinstance(portability.get(name), str) for name in PORTABILITY_FIELDS)
    ):
        return f"has a 'portability' object without string {' and '.join(PORTABILITY_FIELDS)}"
    return None


def load_zsre(file: Path, limit: int | None = None) -> list[ZsreEdit]:
    """Read a MEND-format zsRE file (a JSON list) into edits, in file order.

    ``case_id`` is the record's index in the file; rows with an empty ``subject``, ``src`` or
    ``alt`` cannot be edited and are skipped (logged). ``target_true`` is the first of ``answers``
    (``pred`` when ``answers`` is empty).

    Raises:
        errors.MissingFileError: No such file.
        errors.FileFormatError: Not a JSON list, or a row misses a column (the message names the
            file, the row and the column).
    """
    records = io.read_json(Path(file), "zsRE file")
    if not isinstance(records, list):
        raise errors.FileFormatError(
            f"zsRE file {file} holds a {type(records).__name__}, not a JSON list of MEND-format "
            "records; pass a file like zsre_mend_eval.json"
        )
    edits = []
    empty = []
    for index, record in enumerate(records[:limit] if limit is not None else records):
        problem = _row_problem(record)
        if problem is not None:
            raise errors.FileFormatError(
                f"zsRE file {file}, row {index}: {problem} (MEND format needs "
                f"{', '.join(ZSRE_REQUIRED_FIELDS)}); fix or drop that row"
            )
        if not all(record[name].strip() for name in ("subject", "src", "alt")):
            empty.append(index)
            continue
        answers = record["answers"] or [record.get("pred", "")]
        portability = record.get("portability") or {}
        edits.append(
            ZsreEdit(
                case_id=index,
                subject=record["subject"],
                prompt=record["src"],
                target_new=record["alt"],
                target_true=answers[0],
                rephrase_prompt=record["rephrase"],
                locality_prompt=record["loc"],
                locality_answer=record["loc_ans"],
                portability_prompt=portability.get("New Question", ""),
                portability_answer=portability.get("New Answer", ""),
            )
        )
    if empty:
        logger.warning(
            "zsRE file %s: skipped %d rows with an empty subject, src or alt (first: row %d)",
            file,
            len(empty),
            empty[0],
        )
    return edits
