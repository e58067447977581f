"""Bias in Bios (De-Arteaga et al. 2019) as context mediation samples, read safely.

The official Bias in Bios code writes a pickle (``BIOS.pkl``): a list of dicts, one per
biography, with ``name`` (a list or tuple of name parts: first, middle, last), ``raw`` (the
biography), ``title`` (the occupation, e.g. ``"software_engineer"``), ``gender``, ``bio``,
``path``, ``URI``, ``start_pos``. It is read here through :class:`RestrictedUnpickler`, which
admits only what pickle builds without importing anything (lists, tuples, dicts, strings,
numbers, booleans, None, bytes): any class or function named in the file is refused with an
error naming it and the file, and nothing of the file runs. JSON (a list of the same records)
and JSONL (one record a line) exports load too; the toy world writes a JSON one.

A sample is built as in the REMEDI reference (``_reformat_bias_in_bios_file``):

- the entity is the first name (``name[0]``); the sample id joins the name parts with ``_``
  (a repeated id gets ``_2``, ``_3``, ... here, so that ids stay unique: the reference keeps
  duplicates);
- one sentence of the biography is kept: of the sentences with at least
  :data:`SENTENCE_MIN_WORDS` words, the second one, or the first when there is only one
  (sentences are split by :func:`~remedi.data.text.split_sentences`, untrained Punkt, instead
  of the reference's spaCy model: Punkt also splits after abbreviations such as "Dr.", whose
  one-word piece is then too short to count as a sentence);
- in it, every variant of the name (full name, first + last, last; each also after a prefix
  of :data:`BIOSBIAS_PREFIXES` in lower, capitalised and upper case) becomes the first name,
  and the characters ``*``, ``•`` and spaces are stripped from both ends;
- when the sentence does not name the person, ``"About {first}: "`` is put before it; when it
  names them more than once, the sample is dropped (the editor edits the entity's last
  mention); a context under :data:`BIO_MIN_WORDS` words is dropped; so are the names in
  :data:`BIOSBIAS_BLACKLISTED_NAMES` and records with an empty title or first name;
- the prompt is ``"{first} has the occupation of"``, the mediated target the title with ``_``
  as spaces, and there is no unmediated target. A record may name another prompt template in
  an optional ``prompt_template`` field (an extension of ours, not in the official pickle): the
  toy world's export uses its LM's occupation phrasing there.

Only the first :data:`BIOSBIAS_MAX_RECORDS` (50,000) records of the file are read by default, as
the reference reads them (``remedi/data.py:378,384-385`` of evandez/REMEDI, ``limit=50000``); the
official pickle holds about 400,000. ``max_records=None`` (or 0; ``--max-records 0`` on the command
line) reads every record. Sample ids do not depend on the limit (a repeated name's ``_2`` counts only
earlier records), so a run trained on the first N records finds its samples in any larger pool.

Reformatted samples are cached under ``remedi.env.data_dir()/biosbias`` in a file named by the
source file's SHA-256 and the record limit, so a changed source is re-read; the cache is written
atomically, and only after the whole file was read and checked.
"""

from __future__ import annotations

import io as stdlib_io
import json
import logging
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import datasets

from remedi import env, errors, io
from remedi.data.samples import (
    ContextMediationSample,
    DatasetFormatError,
    log_dropped,
    raise_bad_record,
    read_json_list,
    samples_dataset,
)
from remedi.data.text import split_sentences

logger = logging.getLogger(__name__)

BIOSBIAS_PROMPT_TEMPLATE = "{} has the occupation of"
"""The reference's prompt; ``{}`` is the first name."""

BIOSBIAS_PREFIXES = (
    "professor",
    "prof.",
    "prof",
    "dr.",
    "dr",
    "doctor",
    "mr.",
    "mr",
    "ms.",
    "ms",
    "mrs.",
    "mrs",
    "rev.",
    "rev",
    "pastor",
)
"""Titles before a name that read badly before a first name; replaced together with the name."""

BIOSBIAS_BLACKLISTED_NAMES = frozenset({"Non-Residential"})
"""First names that the official scraper got wrong (as the reference)."""

BIO_MIN_WORDS = 10
"""A sample's context needs at least this many words (the reference's ``bio_min_words``)."""

SENTENCE_MIN_WORDS = 3
"""Shorter sentences do not count when choosing the bio's sentence (``sent_min_words``)."""

BIOSBIAS_FILE_NAME = "BIOS.pkl"
"""What the official code writes; looked for in the data directory when no file is given."""

BIOSBIAS_REQUIRED_FIELDS = ("name", "raw", "title")

BIOSBIAS_MAX_RECORDS = 50_000
"""How many records of the file are read by default: the reference's ``limit`` (evandez/REMEDI
``remedi/data.py:378``, applied at 384-385 before any sample is built). None or 0: all."""

CACHE_FORMAT_VERSION = 1
"""Bumped when the same source file would give other samples; older caches are rebuilt."""

# Drop reasons, counted in the log.
_BLACKLISTED = "blacklisted name"
_EMPTY_TITLE = "empty title"
_EMPTY_NAME = "empty first name"
_REPEATED_NAME = "name more than once in the sentence"
_TOO_SHORT = f"context under {BIO_MIN_WORDS} words"

_PICKLE_SUFFIXES = (".pkl", ".pickle")
_JSONL_SUFFIXES = (".jsonl",)


class UnsafePickleError(DatasetFormatError):
    """A pickle names a class or function: it is refused without running anything."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle builtin containers and scalars only; refuse every class or function.

    Lists, tuples, dicts, strings, bytes, numbers, booleans and None have their own opcodes and
    never reach :meth:`find_class`; everything else (any class, ``os.system``, even
    ``builtins.set`` in old protocols) must be looked up there and is refused before it is
    imported, so nothing the file names is ever called.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> NoReturn:
        raise UnsafePickleError(
            f"{self.source} asks to load {module}.{name}; only builtin containers and scalars "
            "are allowed in a Bias in Bios pickle, so it was refused and nothing in it was run. "
            "If you trust the file, export its records to JSON and pass that instead"
        )

    def persistent_load(self, pid: Any) -> NoReturn:
        raise UnsafePickleError(
            f"{self.source} refers to a persistent object ({str(pid)[:80]!r}); refused"
        )


def read_restricted_pickle(file: Path) -> Any:
    """The object in pickle ``file``, through :class:`RestrictedUnpickler`."""
    file = Path(file)
    if not file.is_file():
        raise errors.MissingFileError(f"Bias in Bios file not found: {file}")
    data = file.read_bytes()
    try:
        return RestrictedUnpickler(stdlib_io.BytesIO(data), str(file)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
        raise DatasetFormatError(
            f"{file} is not a readable pickle ({type(error).__name__}: {error}); is it the "
            "official Bias in Bios BIOS.pkl, complete?"
        ) from error


def _read_jsonl(file: Path) -> list[Any]:
    if not file.is_file():
        raise errors.MissingFileError(f"Bias in Bios file not found: {file}")
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DatasetFormatError(
                f"{file} line {number} is not valid JSON ({error.msg}); a JSONL export has one "
                "record a line"
            ) from error
    return records


def read_biosbias_records(file: Path) -> list[Any]:
    """The raw records of a Bias in Bios pickle (restricted), JSON list or JSONL file."""
    file = Path(file)
    suffix = file.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        data = read_restricted_pickle(file)
    elif suffix in _JSONL_SUFFIXES:
        data = _read_jsonl(file)
    else:
        data = read_json_list(file, "Bias in Bios file")
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{file} must hold a list of Bias in Bios records, but it holds a "
            f"{type(data).__name__}; is it the official BIOS.pkl (or a JSON export of it)?"
        )
    return data


def _validate_record(file: Path, index: int, record: Any) -> None:
    what = "Bias in Bios records"
    hint = (
        "Expected the official pickle's records: {name: [first, middle, last], raw: bio text, "
        "title: occupation, gender, ...}."
    )
    if not isinstance(record, dict):
        raise_bad_record(file, what, index, _jsonable(record), "is not a dict", hint)
    missing = [key for key in BIOSBIAS_REQUIRED_FIELDS if key not in record]
    if missing:
        problem = f"has no field {', '.join(missing)}"
        raise_bad_record(file, what, index, _jsonable(record), problem, hint)
    name = record["name"]
    if (
        not isinstance(name, list | tuple)
        or not name
        or not all(part is None or isinstance(part, str) for part in name)
    ):
        problem = "has a name that is not a list of name parts (strings)"
        raise_bad_record(file, what, index, _jsonable(record), problem, hint)
    for key in ("raw", "title"):
        if not isinstance(record[key], str):
            problem = f"has a {key} that is not a string"
            raise_bad_record(file, what, index, _jsonable(record), problem, hint)
    template = record.get("prompt_template")
    if template is not None and (not isinstance(template, str) or template.count("{}") != 1):
        problem = "has a prompt_template without exactly one '{}' for the first name"
        raise_bad_record(file, what, index, _jsonable(record), problem, hint)


def _jsonable(record: Any) -> Any:
    """``record`` with tuples and bytes made printable (for error messages)."""
    return json.loads(json.dumps(record, default=repr))


def biosbias_record_limit(max_records: int | None) -> int | None:
    """``max_records`` as a limit: None for every record (None or 0), else the positive count.

    Raises:
        UsageError: A negative count.
    """
    if max_records is None or max_records == 0:
        return None
    if max_records < 0:
        raise errors.UsageError(
            f"max_records is {max_records}; give a positive number of Bias in Bios records to "
            f"read (default {BIOSBIAS_MAX_RECORDS:,}, the reference's), or 0 for all of them"
        )
    return int(max_records)


def choose_sentence(bio: str) -> str:
    """The bio's sentence the reference keeps: the second one of at least
    :data:`SENTENCE_MIN_WORDS` words, else the first, else ``""``."""
    sentences = [
        sentence.strip()
        for sentence in split_sentences(bio)
        if len(sentence.split()) >= SENTENCE_MIN_WORDS
    ]
    if not sentences:
        return ""
    return sentences[1] if len(sentences) > 1 else sentences[0]


def name_variants(name: Sequence[str | None]) -> list[str]:
    """What is replaced by the first name, in order: prefixed variants, then bare ones."""
    parts = [part for part in name if part]
    first, last = str(name[0] or ""), str(name[-1] or "")
    bare = [" ".join(parts), f"{first} {last}", last]
    prefixed = [
        f"{cased} {variant}"
        for variant in bare
        for prefix in BIOSBIAS_PREFIXES
        for cased in (prefix, prefix.capitalize(), prefix.upper())
    ]
    return [variant for variant in prefixed + bare if variant.strip()]


def biosbias_record_sample(
    record: Mapping[str, Any], sample_id: str
) -> tuple[ContextMediationSample | None, str | None]:
    """The sample of one validated record, or None and why it is dropped."""
    name = list(record["name"])
    first = (name[0] or "").strip()
    if not first:
        return None, _EMPTY_NAME
    if first in BIOSBIAS_BLACKLISTED_NAMES:
        return None, _BLACKLISTED
    title = record["title"].replace("_", " ").strip()
    if not title:
        return None, _EMPTY_TITLE
    context = choose_sentence(record["raw"])
    for variant in name_variants(name):
        context = context.replace(variant, first)
    context = context.strip("*• ")
    occurrences = context.count(first)
    if occurrences == 0:
        context = f"About {first}: {context}"
    elif occurrences > 1:
        return None, _REPEATED_NAME
    if len(context.split()) < BIO_MIN_WORDS:
        return None, _TOO_SHORT
    template = record.get("prompt_template") or BIOSBIAS_PROMPT_TEMPLATE
    attribute = context[context.index(first) + len(first) :].strip(".: ")
    return (
        ContextMediationSample(
            id=sample_id,
            source="biosbias",
            entity=first,
            prompt=template.format(first),
            context=context,
            attribute=attribute,
            target_mediated=title,
            target_unmediated=None,
        ),
        None,
    )


def _base_id(record: Mapping[str, Any]) -> str:
    return "_".join(part for part in record["name"] if part)


def biosbias_samples_and_bios(
    records: Sequence[Any], file: Path
) -> tuple[list[ContextMediationSample], dict[str, str], dict[str, int]]:
    """Samples of validated records, each sample's whole bio (by id), and drop counts.

    Every record is checked before any sample is built, so a bad record raises before anything
    is written. The whole bio is the record's ``bio`` (the official bio without its first
    sentence) when present, else ``raw``; the evaluation's consistency compares with them.
    """
    for index, record in enumerate(records):
        _validate_record(file, index, record)
    samples: list[ContextMediationSample] = []
    bios: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    about = 0
    for record in records:
        base = _base_id(record)
        seen[base] += 1
        sample_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
        sample, reason = biosbias_record_sample(record, sample_id)
        if sample is None:
            dropped[reason or "unknown"] += 1
            continue
        about += sample["context"].startswith(f"About {sample['entity']}: ")
        samples.append(sample)
        bio = record.get("bio")
        bios[sample_id] = bio if isinstance(bio, str) and bio.strip() else record["raw"]
    log_dropped(file, len(records), dropped)
    logger.info(
        "%d Bias in Bios samples from %s (%d with 'About {name}:' before a sentence without "
        "the name)",
        len(samples),
        file,
        about,
    )
    return samples, bios, dict(dropped)


def biosbias_cache_file(sha256: str, max_records: int | None = None) -> Path:
    """Where the samples of a source file with this SHA-256 are cached: ``samples-<sha>.json``
    for every record, ``samples-<sha>-first<N>.json`` for the first N."""
    limit = biosbias_record_limit(max_records)
    suffix = "" if limit is None else f"-first{limit}"
    return env.data_dir() / "biosbias" / f"samples-{sha256}{suffix}.json"


def default_biosbias_file() -> Path:
    """``data_dir()/BIOS.pkl``: where the official pickle is looked for by default."""
    return env.data_dir() / BIOSBIAS_FILE_NAME


def _resolve_file(file: Path | None) -> Path:
    path = Path(file) if file is not None else default_biosbias_file()
    if not path.is_file():
        raise errors.MissingFileError(
            f"Bias in Bios file not found: {path}. The dataset cannot be downloaded "
            "automatically: build BIOS.pkl with the official code (github.com/microsoft/biosbias) "
            f"and pass it with --dataset-file PATH (or put it at {default_biosbias_file()}); "
            "a JSON or JSONL export of its records works too"
        )
    return path


def load_biosbias_cached(
    file: Path | None = None, max_records: int | None = BIOSBIAS_MAX_RECORDS
) -> dict[str, Any]:
    """The cached reformatting of the first ``max_records`` records of a Bias in Bios file
    (None or 0: all): ``samples``, ``bios``, ``dropped``.

    Built (and cached atomically) on first use; reused while the source file's SHA-256 and the
    limit are the same.
    """
    limit = biosbias_record_limit(max_records)
    path = _resolve_file(file)
    sha256 = io.file_sha256(path)
    cache = biosbias_cache_file(sha256, limit)
    if cache.is_file():
        try:
            stored = io.read_json(cache, "Bias in Bios cache")
        except errors.FileFormatError as error:
            logger.warning("ignoring unreadable cache %s (%s); rebuilding it", cache, error)
        else:
            if (
                isinstance(stored, dict)
                and stored.get("format_version") == CACHE_FORMAT_VERSION
                and stored.get("sha256") == sha256
                and stored.get("max_records") == limit
            ):
                logger.info("Bias in Bios samples of %s from cache %s", path, cache)
                return stored
    records = read_biosbias_records(path)
    if limit is not None and len(records) > limit:
        logger.info(
            "reading the first %d of the %d records of %s (the reference's limit; "
            "--max-records 0 reads all)",
            limit,
            len(records),
            path,
        )
        records = records[:limit]
    samples, bios, dropped = biosbias_samples_and_bios(records, path)
    stored = {
        "format_version": CACHE_FORMAT_VERSION,
        "source": str(path),
        "sha256": sha256,
        "max_records": limit,
        "records": len(records),
        "dropped": dropped,
        "samples": [dict(sample) for sample in samples],
        "bios": bios,
    }
    try:
        io.write_json(cache, stored, indent=None)
    except OSError as error:  # e.g. a read-only data directory: the samples are still good
        logger.warning("could not cache the Bias in Bios samples at %s (%s)", cache, error)
    return stored


def load_biosbias(
    file: Path | None = None, max_records: int | None = BIOSBIAS_MAX_RECORDS, **_: Any
) -> datasets.Dataset:
    """Bias in Bios as context mediation samples (see the module docstring).

    ``file``: the official pickle, or a JSON / JSONL export of its records (default
    ``data_dir()/BIOS.pkl``). ``max_records``: read only the file's first this many records
    (default :data:`BIOSBIAS_MAX_RECORDS`, the reference's; None or 0: all).
    """
    stored = load_biosbias_cached(file, max_records)
    return samples_dataset(stored["samples"])


def load_biosbias_bios(
    file: Path | None = None, max_records: int | None = BIOSBIAS_MAX_RECORDS
) -> dict[str, str]:
    """Each sample's whole bio, by sample id (the references of consistency)."""
    return dict(load_biosbias_cached(file, max_records)["bios"])
