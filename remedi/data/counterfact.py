"""What a sample is, and how each dataset becomes samples.

A *context mediation sample* (REMEDI's unit of training and evaluation) says: in ``prompt``,
``entity`` should behave as if ``context`` (a sentence stating ``attribute`` about it) were true,
so the LM should now continue the prompt with ``target_mediated`` instead of
``target_unmediated``. Each dataset has one loader in ``DATASET_LOADERS`` that returns these
samples as a ``datasets.Dataset`` (one column per field of :class:`ContextMediationSample`).

CounterFact comes in two formats:

- ROME's full format (``counterfact.json``: ``case_id``, ``pararel_idx``, ``requested_rewrite``,
  ``paraphrase_prompts``, ...). It is read from ``--dataset-file``, from the toy world's export,
  or from a download cache under ``remedi.env.data_dir()``; the download is checked for size and
  checksum and written atomically. :func:`load_counterfact_records` returns the raw records
  (the evaluation needs their paraphrase and neighborhood prompts).
- EasyEdit's reduced format (``case_id, prompt, subject, target_new, ground_truth, ...``),
  loaded with ``counterfact_easyedit``.

Both map record ``case_id`` to sample id ``counterfact/<case_id>``, so samples join back to
their records. A CounterFact sample is built as in the REMEDI reference: the prompt is the
rewrite prompt with the subject filled in, the context is the prompt followed by the new target
("Danielle Darrieux's mother tongue is English"), and the attribute is the context after the
(last) mention of the entity. Records that cannot be used (subject absent from the prompt, empty
target) are dropped and counted in the log; a file that is not CounterFact at all raises an error
naming the file and its first bad record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypedDict

import datasets
import numpy as np

from remedi import env, io

logger = logging.getLogger(__name__)

COUNTERFACT_URL = "https://rome.baulab.info/data/dsets/counterfact.json"
COUNTERFACT_FILE_NAME = "counterfact.json"
COUNTERFACT_SIZE = 45_108_470
# SHA-256 of ROME's counterfact.json (21,919 records). Recorded from a third-party project that
# pins the same file; the size above is ROME's. If the host ever serves a different file, the
# check fails loudly and the message says how to use a local copy instead.
COUNTERFACT_SHA256 = "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"

# The attribute is the context after the entity, without connecting punctuation.
_ATTRIBUTE_STRIP = ",-;: "


class ContextMediationSample(TypedDict):
    """One sample: in ``prompt``, ``entity`` should behave as if ``context`` were true."""

    id: str  # "counterfact/1234"
    source: str  # the dataset it came from, e.g. "counterfact"
    entity: str  # "Danielle Darrieux"
    prompt: str  # "The mother tongue of Danielle Darrieux is"
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

_STRING_LIST = datasets.Sequence(datasets.Value("string"))
_TARGET = {"str": datasets.Value("string"), "id": datasets.Value("string")}
COUNTERFACT_FEATURES = datasets.Features(
    {
        "case_id": datasets.Value("int64"),
        "pararel_idx": datasets.Value("int64"),
        "requested_rewrite": {
            "prompt": datasets.Value("string"),
            "relation_id": datasets.Value("string"),
            "target_new": _TARGET,
            "target_true": _TARGET,
            "subject": datasets.Value("string"),
        },
        "paraphrase_prompts": _STRING_LIST,
        "neighborhood_prompts": _STRING_LIST,
        "attribute_prompts": _STRING_LIST,
        "generation_prompts": _STRING_LIST,
    }
)


class DatasetFormatError(ValueError):
    """A data file is not in the format its loader reads."""


# ---------------------------------------------------------------------------------------
# Building samples.


def attribute_from_context(context: str, entity: str) -> str:
    """Return what ``context`` says about ``entity``: the text after its last mention."""
    return context.split(entity)[-1].strip(_ATTRIBUTE_STRIP)


def counterfact_sample(
    case_id: int | str,
    subject: str,
    prompt: str,
    target_new: str,
    target_true: str,
    source: str = "counterfact",
) -> ContextMediationSample:
    """Build the sample for one CounterFact rewrite (``prompt`` already names the subject)."""
    context = f"{prompt} {target_new}"
    return ContextMediationSample(
        id=f"counterfact/{case_id}",
        source=source,
        entity=subject,
        prompt=prompt,
        context=context,
        attribute=attribute_from_context(context, subject),
        target_mediated=target_new,
        target_unmediated=target_true,
    )


def _unusable_reason(subject: str, prompt: str, target_new: str, target_true: str) -> str | None:
    """Why a well-formed record cannot become a sample, or None if it can."""
    if not subject.strip():
        return "empty subject"
    if subject not in prompt:
        return "subject not in prompt"
    if not target_new.strip() or not target_true.strip():
        return "empty target"
    return None


def _log_dropped(file: Path, total: int, dropped: dict[str, int]) -> None:
    if dropped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items()))
        logger.warning(
            "dropped %d of %d records of %s that cannot be used (%s)",
            sum(dropped.values()),
            total,
            file,
            reasons,
        )


def _read_json_list(file: Path, what: str) -> list[Any]:
    data = io.read_json(file, what)
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{what} {file} must hold a JSON list of records, but its top level is a "
            f"{type(data).__name__}; is this the right file?"
        )
    return data


def _bad_record(
    file: Path, what: str, index: int, record: Any, problem: str, hint: str
) -> NoReturn:
    snippet = json.dumps(record)[:300]
    raise DatasetFormatError(
        f"{file} is not {what}: record {index} {problem}. Record {index}: {snippet}. {hint}"
    )


# ---------------------------------------------------------------------------------------
# CounterFact in ROME's format.


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, file: Path, expected_size: int | None = None, expected_sha256: str | None = None
) -> Path:
    """Download ``url`` to ``file`` atomically, checking its size and SHA-256 if given.

    A failed check or an interrupted download leaves no file behind. Works with ``file://``
    URLs too (handy for mirrors on a shared disk).
    """
    file = Path(file)

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        size = 0
        with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as handle:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if expected_size is not None and size != expected_size:
            raise OSError(
                f"download of {url} is {size:,} bytes, expected {expected_size:,}; the copy is "
                f"incomplete or not the expected file, so it was not saved to {file}"
            )
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise OSError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected "
                f"{expected_sha256}; it was not saved to {file}. If you trust your copy, "
                f"pass it explicitly (--dataset-file PATH)"
            )

    logger.info("downloading %s to %s", url, file)
    io.atomic_write(file, write)
    return file


def counterfact_cache_file() -> Path:
    """Where a downloaded ROME ``counterfact.json`` is kept."""
    return env.data_dir() / COUNTERFACT_FILE_NAME


def ensure_counterfact_file(
    file: Path | None = None,
    url: str = COUNTERFACT_URL,
    expected_size: int | None = COUNTERFACT_SIZE,
    expected_sha256: str | None = COUNTERFACT_SHA256,
) -> Path:
    """Return a local ROME ``counterfact.json``: ``file`` if given, else the cache (downloading).

    Offline, the error says where to put the file.
    """
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"CounterFact file not found: {file}")
        return file
    cached = counterfact_cache_file()
    if cached.is_file():
        return cached
    try:
        return download_file(url, cached, expected_size, expected_sha256)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise FileNotFoundError(
            f"CounterFact is not cached at {cached} and could not be downloaded from {url} "
            f"({error}). On a machine with network, download {COUNTERFACT_URL} "
            f"({COUNTERFACT_SIZE:,} bytes) and put it at {cached} (or set REMEDI_DATA_DIR), "
            f"or pass a local copy with --dataset-file PATH."
        ) from error


def _validate_counterfact_record(file: Path, index: int, record: Any) -> None:
    what = "CounterFact in ROME's format"
    hint = (
        "Expected ROME's counterfact.json records: {case_id, requested_rewrite: {prompt, "
        "subject, target_new: {str, id}, target_true: {str, id}, ...}, paraphrase_prompts, ...}."
    )
    if isinstance(record, dict) and "requested_rewrite" not in record and "ground_truth" in record:
        hint = "It looks like EasyEdit's reduced format: load it with -d counterfact_easyedit."
    if not isinstance(record, dict):
        _bad_record(file, what, index, record, "is not a JSON object", hint)
    if not isinstance(record.get("case_id"), int):
        _bad_record(file, what, index, record, "has no integer case_id", hint)
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        _bad_record(file, what, index, record, "has no requested_rewrite object", hint)
    for key in ("prompt", "subject"):
        if not isinstance(rewrite.get(key), str):
            _bad_record(file, what, index, record, f"has no string requested_rewrite.{key}", hint)
    for key in ("target_new", "target_true"):
        target = rewrite.get(key)
        if not isinstance(target, dict) or not isinstance(target.get("str"), str):
            _bad_record(file, what, index, record, f"has no requested_rewrite.{key}.str", hint)
    for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            _bad_record(
                file, what, index, record, f"has a {key} that is not a list of strings", hint
            )


def _normalise_counterfact_record(record: dict) -> dict:
    """Keep ROME's fields with stable types (ids as strings; missing lists empty)."""
    rewrite = record["requested_rewrite"]

    def target(value: dict) -> dict:
        return {"str": value["str"], "id": str(value.get("id", ""))}

    generation = record.get("generation_prompts", [])
    return {
        "case_id": record["case_id"],
        "pararel_idx": record.get("pararel_idx", -1),
        "requested_rewrite": {
            "prompt": rewrite["prompt"],
            "relation_id": str(rewrite.get("relation_id", "")),
            "target_new": target(rewrite["target_new"]),
            "target_true": target(rewrite["target_true"]),
            "subject": rewrite["subject"],
        },
        "paraphrase_prompts": record.get("paraphrase_prompts", []),
        "neighborhood_prompts": record.get("neighborhood_prompts", []),
        "attribute_prompts": record.get("attribute_prompts", []),
        "generation_prompts": generation if isinstance(generation, list) else [],
    }


def counterfact_prompt(record: dict) -> str:
    """The rewrite prompt of a ROME record with its subject filled in."""
    rewrite = record["requested_rewrite"]
    return str(rewrite["prompt"]).replace("{}", rewrite["subject"])


def load_counterfact_records(
    file: Path | None = None, url: str = COUNTERFACT_URL, **download_kwargs: Any
) -> datasets.Dataset:
    """Load CounterFact's raw ROME records, validated, without the unusable ones.

    ``file`` defaults to the download cache (downloaded if absent). A record whose prompt has
    no ``{}`` slot for its subject, or whose target is empty, is dropped and counted in the log.
    """
    path = ensure_counterfact_file(file, url=url, **download_kwargs)
    raw = _read_json_list(path, "CounterFact file")
    records = []
    dropped: dict[str, int] = {}
    for index, record in enumerate(raw):
        _validate_counterfact_record(path, index, record)
        rewrite = record["requested_rewrite"]
        reason = (
            "subject not in prompt"
            if "{}" not in rewrite["prompt"]
            else _unusable_reason(
                rewrite["subject"],
                counterfact_prompt(record),
                rewrite["target_new"]["str"],
                rewrite["target_true"]["str"],
            )
        )
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        records.append(_normalise_counterfact_record(record))
    _log_dropped(path, len(raw), dropped)
    logger.info("loaded %d CounterFact records from %s", len(records), path)
    return datasets.Dataset.from_list(records, features=COUNTERFACT_FEATURES)


def counterfact_samples(records: datasets.Dataset) -> datasets.Dataset:
    """Map validated ROME records (from :func:`load_counterfact_records`) to samples."""
    samples = [
        counterfact_sample(
            record["case_id"],
            record["requested_rewrite"]["subject"],
            counterfact_prompt(record),
            record["requested_rewrite"]["target_new"]["str"],
            record["requested_rewrite"]["target_true"]["str"],
        )
        for record in records
    ]
    return datasets.Dataset.from_list(list(map(dict, samples)), features=SAMPLE_FEATURES)


def load_counterfact(file: Path | None = None, **kwargs: Any) -> datasets.Dataset:
    """CounterFact (ROME's format) as context mediation samples."""
    return counterfact_samples(load_counterfact_records(file, **kwargs))


# ---------------------------------------------------------------------------------------
# CounterFact in EasyEdit's reduced format.

EASYEDIT_REQUIRED_FIELDS = ("case_id", "prompt", "subject", "target_new", "ground_truth")


def load_counterfact_easyedit(file: Path | None = None, **_: Any) -> datasets.Dataset:
    """CounterFact in EasyEdit's reduced format (e.g. ``counterfact-train.json``) as samples."""
    if file is None:
        folder = env.shared_data_dir() / "counterfact_easyedit"
        raise FileNotFoundError(
            "the counterfact_easyedit dataset needs its file: pass --dataset-file PATH, e.g. "
            f"{folder / 'counterfact-train.json'}"
        )
    path = Path(file)
    raw = _read_json_list(path, "CounterFact (EasyEdit format) file")
    what = "CounterFact in EasyEdit's format"
    hint = f"Expected EasyEdit records with fields {', '.join(EASYEDIT_REQUIRED_FIELDS)}."
    samples = []
    dropped: dict[str, int] = {}
    for index, record in enumerate(raw):
        if isinstance(record, dict) and "requested_rewrite" in record:
            hint = "It looks like ROME's full format: load it with -d counterfact."
        if not isinstance(record, dict):
            _bad_record(path, what, index, record, "is not a JSON object", hint)
        if not isinstance(record.get("case_id"), int | str):
            _bad_record(path, what, index, record, "has no case_id", hint)
        for key in EASYEDIT_REQUIRED_FIELDS[1:]:
            if not isinstance(record.get(key), str):
                _bad_record(path, what, index, record, f"has no string field {key!r}", hint)
        reason = _unusable_reason(
            record["subject"], record["prompt"], record["target_new"], record["ground_truth"]
        )
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        sample = counterfact_sample(
            record["case_id"],
            record["subject"],
            record["prompt"],
            record["target_new"],
            record["ground_truth"],
            source="counterfact_easyedit",
        )
        samples.append(dict(sample))
    _log_dropped(path, len(raw), dropped)
    logger.info("loaded %d CounterFact (EasyEdit format) samples from %s", len(samples), path)
    return datasets.Dataset.from_list(samples, features=SAMPLE_FEATURES)


# ---------------------------------------------------------------------------------------
# The registry and splits.

DATASET_LOADERS: dict[str, Callable[..., datasets.Dataset]] = {
    "counterfact": load_counterfact,
    "counterfact_easyedit": load_counterfact_easyedit,
}


def load_dataset(name: str, file: Path | None = None, **kwargs: Any) -> datasets.Dataset:
    """Load dataset ``name`` (a key of ``DATASET_LOADERS``) as context mediation samples."""
    if name not in DATASET_LOADERS:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASET_LOADERS))}"
        )
    return DATASET_LOADERS[name](file=file, **kwargs)


def entity_disjoint_split(
    dataset: datasets.Dataset, test_size: float, seed: int, entity_column: str = "entity"
) -> datasets.DatasetDict:
    """Split into "train" and "test" so that no entity has samples on both sides.

    Entities are shuffled with ``seed`` and moved to "test" until it holds at least
    ``test_size`` of the samples (at least one entity, and never all of them when there are
    two or more). Row order within each side follows the input.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    entities = np.asarray(dataset[entity_column], dtype=object)
    unique, inverse, counts = np.unique(entities, return_inverse=True, return_counts=True)
    if len(unique) < 2:
        raise ValueError(
            f"cannot split {len(dataset)} samples by entity: they mention fewer than 2 entities"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    covered = np.cumsum(counts[order])
    wanted = math.ceil(test_size * len(dataset))
    n_test_entities = int(np.searchsorted(covered, wanted) + 1)
    n_test_entities = min(max(n_test_entities, 1), len(unique) - 1)
    is_test_entity = np.zeros(len(unique), dtype=bool)
    is_test_entity[order[:n_test_entities]] = True
    is_test = is_test_entity[inverse]
    return datasets.DatasetDict(
        {
            "train": dataset.select(np.flatnonzero(~is_test)),
            "test": dataset.select(np.flatnonzero(is_test)),
        }
    )


def select_ids(dataset: datasets.Dataset, ids: Sequence[str]) -> datasets.Dataset:
    """Rows of ``dataset`` with the given sample ids, in the order of ``ids``.

    Raises if an id is missing (e.g. the dataset file changed since a run saved its split).
    """
    position = {sample_id: index for index, sample_id in enumerate(dataset["id"])}
    missing = [sample_id for sample_id in ids if sample_id not in position]
    if missing:
        raise KeyError(
            f"{len(missing)} sample ids are not in the dataset (first: {missing[0]!r}); was the "
            f"run trained on a different dataset file?"
        )
    return dataset.select([position[sample_id] for sample_id in ids])
