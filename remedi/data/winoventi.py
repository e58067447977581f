"""WinoVenti (Do, Pavlick 2021) as context mediation samples, as the REMEDI reference reads it.

The file is ``winoventi_bert_large_final.tsv`` (tab-separated, a header row). Each row has a
``masked_prompt`` of two sentences, a context and a cloze: "Margaret smelled her bottle of maple
syrup and it was sweet. The syrup is [MASK]." The sample's entity is ``Word`` ("syrup"), the
context the first sentence, the attribute what follows the entity in it, the prompt the second
sentence without ``[MASK]`` ("The syrup is"), ``target_mediated`` the row's ``target`` and
``target_unmediated`` its ``incorrect``. As in the reference, rows whose prompt is not exactly
two sentences, that do not mention the entity twice, or whose context does not state
``biased_word_context``/``adversarial_word_context`` after the entity are dropped (typos).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import datasets

from remedi import errors
from remedi.data.samples import (
    ContextMediationSample,
    DatasetFormatError,
    check_header,
    log_dropped,
    samples_dataset,
)

logger = logging.getLogger(__name__)

WINOVENTI_FILE_NAME = "winoventi_bert_large_final.tsv"
WINOVENTI_COLUMNS = (
    "Word",
    "biased_word_context",
    "adversarial_word_context",
    "masked_prompt",
    "target",
    "incorrect",
)
MASK = "[MASK]"


def _unusable_reason(row: dict[str, str]) -> str | None:
    word, masked = row["Word"], row["masked_prompt"]
    parts = masked.split(". ")
    if len(parts) != 2:
        return "prompt is not two sentences"
    if masked.count(word) != 2:
        return "entity not mentioned exactly twice"
    context = parts[0]
    if word not in context:
        return "context does not mention the entity"
    after = context[context.index(word) :]
    if row["biased_word_context"] not in after and row["adversarial_word_context"] not in after:
        return "context states no attribute after the entity"
    return None


def winoventi_sample(row: dict[str, str]) -> ContextMediationSample:
    """The sample of one (usable) WinoVenti row."""
    entity = row["Word"]
    context, cloze = row["masked_prompt"].split(". ")
    prompt = cloze.replace(MASK, "").strip(". ")
    attribute = context.split(entity, 1)[1].strip(". ")
    return ContextMediationSample(
        id=f"{entity}_{row['target']}_{row['incorrect']}",
        source="winoventi",
        entity=entity,
        prompt=prompt,
        context=context,
        attribute=attribute,
        target_mediated=row["target"],
        target_unmediated=row["incorrect"],
    )


def load_winoventi(file: Path | None = None, **_: Any) -> datasets.Dataset:
    """Load WinoVenti samples (default file: ``<shared data>/winoventi/``).

    Raises:
        MissingFileError: No file at ``file``.
        DatasetFormatError: A column is missing, or a row's ``masked_prompt`` has no
            ``[MASK]`` (the error names the file, the row and the fix).
    """
    if file is None:
        from remedi import env

        file = env.shared_data_dir() / "winoventi" / WINOVENTI_FILE_NAME
    file = Path(file)
    if not file.is_file():
        raise errors.MissingFileError(
            f"no WinoVenti file at {file}; download {WINOVENTI_FILE_NAME} from "
            "https://github.com/commonsense-exception/commonsense-exception (data/) and pass "
            "its path"
        )
    samples: list[ContextMediationSample] = []
    dropped: dict[str, int] = {}
    seen: set[str] = set()
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        check_header(
            file,
            reader.fieldnames,
            WINOVENTI_COLUMNS,
            f"WinoVenti is tab-separated with the columns {', '.join(WINOVENTI_COLUMNS)} (is "
            f"this {WINOVENTI_FILE_NAME}?)",
        )
        total = 0
        for line, row in enumerate(reader, start=2):
            total += 1
            if MASK not in (row.get("masked_prompt") or ""):
                raise DatasetFormatError(
                    f"{file}, row {line}: masked_prompt {row.get('masked_prompt')!r} has no "
                    f"{MASK}; each prompt must end in a cloze with {MASK} where the target goes "
                    "(fix or delete the row)"
                )
            reason = _unusable_reason(row)
            if reason is None:
                sample = winoventi_sample(row)
                if sample["id"] in seen:
                    reason = "duplicate of an earlier row"
                else:
                    seen.add(sample["id"])
                    samples.append(sample)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
    log_dropped(file, total, dropped)
    return samples_dataset(samples)
