"""CounterFact (Meng et al. 2022) as context mediation samples, in ROME's and EasyEdit's formats.

- ROME's full format (``counterfact.json``: ``case_id``, ``pararel_idx``, ``requested_rewrite``,
  ``paraphrase_prompts``, ...). It is read from ``--dataset-file``, from the toy world's export,
  or from a download cache under ``remedi.env.data_dir()``; the download is checked for size and
  checksum and written atomically. :func:`load_counterfact_records` returns the raw records
  (the evaluation needs their paraphrase and neighborhood prompts), and
  :func:`counterfact_record_sample` turns one into a sample, for training and evaluation alike.
- EasyEdit's reduced format (``case_id, prompt, subject, target_new, ground_truth,
  rephrase_prompt, ...``), loaded with ``counterfact_easyedit``; its ``rephrase_prompt``
  stands in for ROME's first paraphrase prompt. (It is not always that prompt: for case 0 it
  is one of ROME's generation prompts, and only about a sixth of them carry the generated
  sentence that starts ROME's paraphrase prompts.)

Both map record ``case_id`` to sample id ``counterfact/<case_id>``, so samples join back to
their records. A sample is built as in the REMEDI reference: the context is the rewrite prompt
followed by the new target ("The mother tongue of Danielle Darrieux is English"), the attribute
is the context after the (last) mention of the entity, and the prompt is the record's first
paraphrase prompt, cleaned of the paraphrase generator's debris
(:func:`clean_counterfact_paraphrase`). ``prompt_source="rewrite"`` uses the rewrite prompt as
the prompt instead. Records that cannot be used (subject absent from the prompt, empty target,
new target equal to the true one, new target containing the subject) are dropped and counted in
the log; a file that is not
CounterFact at all raises an error naming the file and its first bad record.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from remedi import env, errors, io
from remedi.data.samples import (
    ContextMediationSample,
    attribute_from_context,
    log_dropped,
    raise_bad_record,
    read_json_list,
    samples_dataset,
)
from remedi.data.text import rejoin_sentences_on_entity, split_sentences

logger = logging.getLogger(__name__)

COUNTERFACT_URL = "https://rome.baulab.info/data/dsets/counterfact.json"
COUNTERFACT_FILE_NAME = "counterfact.json"
COUNTERFACT_SIZE = 45_108_470
# SHA-256 of ROME's counterfact.json (21,919 records). Recorded from a third-party project that
# pins the same file; the size above is ROME's. If the host ever serves a different file, the
# check fails loudly and the message says how to use a local copy instead.
COUNTERFACT_SHA256 = "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"

COUNTERFACT_PROMPT_SOURCES = ("paraphrase", "rewrite")
"""Where a CounterFact sample's prompt comes from: the cleaned first paraphrase prompt (the
REMEDI reference's choice, the default) or the rewrite prompt."""

# Text the paraphrase generator left before the sentence that names the subject; everything up
# to the last such marker is dropped, as in the reference.
COUNTERFACT_PARAPHRASE_ARTIFACTS = (" (b. ", "(tr. ", "(min. ")

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

# How a sample's prompt was chosen (counted in the log when a file is loaded).
_CLEANED = "cleaned first paraphrase"
_UNCLEANED = "first paraphrase with debris removed but not split (the reference's last resort)"
_REWRITE = "rewrite prompt (chosen)"
_NO_PARAPHRASE = "rewrite prompt: the record has no paraphrase"
_ENTITY_LOST = "rewrite prompt: cleaning the paraphrase lost the subject"
_FALLBACKS = (_NO_PARAPHRASE, _ENTITY_LOST)


# ---------------------------------------------------------------------------------------
# Building samples.


def _clean_paraphrase(entity: str, paraphrase: str) -> tuple[str | None, str]:
    """The cleaned prompt (None if the entity was lost) and how it was obtained."""
    # The generator sometimes put newlines and unrelated text first; keep the last line.
    text = paraphrase.split("\n")[-1].strip()
    # A Wikipedia category title before the sentence: keep the text from the entity on.
    if text.startswith("Category:"):
        text = entity + text.split(entity)[-1]
    for artifact in COUNTERFACT_PARAPHRASE_ARTIFACTS:
        if artifact in text:
            text = text.split(artifact)[-1]

    sentences = rejoin_sentences_on_entity(entity, split_sentences(text))
    if len(sentences) <= 2:
        if sentences and entity not in sentences[0]:
            # The reference asserts here that a second sentence exists.
            sentences = sentences[1:]
    elif "?" in sentences[-2]:
        # A question about the entity, then the sentence to complete.
        sentences = sentences[-2:]
    else:
        sentences = sentences[-1:]
    # The sentences partition the text, so joining them restores its spacing.
    cleaned = "".join(sentences).strip()
    # A period left in the text (not the entity's) is a sentence boundary the splitter missed.
    if "." in cleaned and "." not in entity:
        cleaned = cleaned.split(".")[-1].strip()

    if entity in cleaned:
        return cleaned, _CLEANED
    if entity in text:
        return text, _UNCLEANED
    return None, _ENTITY_LOST


def clean_counterfact_paraphrase(entity: str, paraphrase: str) -> str | None:
    """Strip a CounterFact paraphrase prompt down to the sentence to complete, as REMEDI did.

    ROME's paraphrase prompts were generated by prefixing the rewrite with model-written text,
    e.g. ``"Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"``;
    the REMEDI reference trains and evaluates on the last sentence only (``"Danielle
    Darrieux, a native"``). The same steps as the reference's
    ``_strip_counterfact_paraphrase_prompt``, in order:

    1. keep the text after the last newline;
    2. if it starts with ``Category:`` (a Wikipedia title), keep the text from the last mention
       of the entity on (the entity followed by what comes after it);
    3. for each artifact of :data:`COUNTERFACT_PARAPHRASE_ARTIFACTS` (``" (b. "``,
       ``"(tr. "``, ``"(min. "``), keep what follows its last occurrence;
    4. split into sentences (:func:`~remedi.data.text.split_sentences`, untrained Punkt
       instead of the reference's spaCy model) and merge splits that broke the entity;
    5. keep: with one or two sentences, both unless the first lacks the entity (then the
       second); with more, the last one, or the last two if the one before the last asks a
       question;
    6. if a period remains and the entity has none, keep the text after the last period;
    7. if that lost the entity, return the text of step 3 (the reference's last resort).

    Returns None where the reference would fail (an assertion, or a prompt without the entity);
    :func:`counterfact_record_sample` then uses the rewrite prompt.
    """
    return _clean_paraphrase(entity, paraphrase)[0]


def _check_prompt_source(prompt_source: str) -> None:
    if prompt_source not in COUNTERFACT_PROMPT_SOURCES:
        raise errors.UsageError(
            f"unknown CounterFact prompt source {prompt_source!r}; use one of "
            f"{', '.join(COUNTERFACT_PROMPT_SOURCES)}"
        )


def _choose_prompt(
    subject: str, rewrite_prompt: str, paraphrases: Sequence[str], prompt_source: str
) -> tuple[str, str]:
    """The sample's prompt (see :data:`COUNTERFACT_PROMPT_SOURCES`) and how it was chosen."""
    _check_prompt_source(prompt_source)
    if prompt_source == "rewrite":
        return rewrite_prompt, _REWRITE
    if not paraphrases or not paraphrases[0].strip():
        return rewrite_prompt, _NO_PARAPHRASE
    cleaned, how = _clean_paraphrase(subject, paraphrases[0])
    return (rewrite_prompt, how) if cleaned is None else (cleaned, how)


def _log_prompt_choices(file: Path, choices: Counter[str]) -> None:
    fallbacks = sum(choices[how] for how in _FALLBACKS)
    details = ", ".join(f"{count} {how}" for how, count in sorted(choices.items()))
    logger.info(
        "prompts of %d samples of %s: %s; %d fell back to the rewrite prompt",
        sum(choices.values()),
        file,
        details or "none",
        fallbacks,
    )


def counterfact_sample(
    case_id: int | str,
    subject: str,
    prompt: str,
    target_new: str,
    target_true: str,
    source: str = "counterfact",
    rewrite_prompt: str | None = None,
) -> ContextMediationSample:
    """Build the sample for one CounterFact rewrite (``prompt`` names the subject).

    The context is ``rewrite_prompt`` (default: ``prompt``) followed by ``target_new``.
    """
    context = f"{prompt if rewrite_prompt is None else rewrite_prompt} {target_new}"
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


def counterfact_prompt(record: Mapping[str, Any]) -> str:
    """The rewrite prompt of a ROME record with its subject filled in."""
    rewrite = record["requested_rewrite"]
    return str(rewrite["prompt"]).replace("{}", rewrite["subject"])


def _record_sample(
    record: Mapping[str, Any], prompt_source: str
) -> tuple[ContextMediationSample, str]:
    rewrite = record["requested_rewrite"]
    rewrite_prompt = counterfact_prompt(record)
    prompt, how = _choose_prompt(
        rewrite["subject"],
        rewrite_prompt,
        list(record.get("paraphrase_prompts") or []),
        prompt_source,
    )
    sample = counterfact_sample(
        record["case_id"],
        rewrite["subject"],
        prompt,
        rewrite["target_new"]["str"],
        rewrite["target_true"]["str"],
        rewrite_prompt=rewrite_prompt,
    )
    return sample, how


def counterfact_record_sample(
    record: Mapping, prompt_source: str = "paraphrase"
) -> ContextMediationSample:
    """The sample of one validated ROME record; training and evaluation both build it here.

    The context is the rewrite prompt followed by the new target. The prompt, with the default
    ``prompt_source="paraphrase"``, is the record's first paraphrase prompt cleaned by
    :func:`clean_counterfact_paraphrase`, as in the REMEDI reference (its
    ``_reformat_counterfact_sample``); so the editor reads the fact in one wording and must
    apply it in another. Where the record has no paraphrase, or cleaning loses the subject
    (the reference would fail), the rewrite prompt is used. ``prompt_source="rewrite"`` always
    uses the rewrite prompt (prompt and context then share their wording).
    """
    return _record_sample(record, prompt_source)[0]


def _unusable_reason(subject: str, prompt: str, target_new: str, target_true: str) -> str | None:
    """Why a well-formed record cannot become a sample, or None if it can."""
    if not subject.strip():
        return "empty subject"
    if subject not in prompt:
        return "subject not in prompt"
    if not target_new.strip() or not target_true.strip():
        return "empty target"
    if target_new.strip() == target_true.strip():
        # Efficacy (p(new) > p(true)) is undefined when they are the same word.
        return "target_new equals target_true"
    if subject in target_new:
        # The context ends with the new target, so the subject's last mention would be inside
        # it, and the attribute after that mention empty or a fragment ("Florence is a twin
        # city of Florence"; "... declares the language Russian" about Russia).
        return "target_new contains the subject"
    return None


# ---------------------------------------------------------------------------------------
# CounterFact in ROME's format: download and records.


class DownloadError(errors.RemediError, OSError):
    """A download finished but is not the expected file (size or checksum)."""


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
            raise DownloadError(
                f"download of {url} is {size:,} bytes, expected {expected_size:,}; the copy is "
                f"incomplete or not the expected file, so it was not saved to {file}"
            )
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise DownloadError(
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
            raise errors.MissingFileError(
                f"CounterFact file not found: {file}; pass ROME's counterfact.json with "
                "--dataset-file, or omit it to use the cache (downloaded when online)"
            )
        return file
    cached = counterfact_cache_file()
    if cached.is_file():
        return cached
    try:
        return download_file(url, cached, expected_size, expected_sha256)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise errors.MissingFileError(
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
        raise_bad_record(file, what, index, record, "is not a JSON object", hint)
    if not isinstance(record.get("case_id"), int):
        raise_bad_record(file, what, index, record, "has no integer case_id", hint)
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise_bad_record(file, what, index, record, "has no requested_rewrite object", hint)
    for key in ("prompt", "subject"):
        if not isinstance(rewrite.get(key), str):
            problem = f"has no string requested_rewrite.{key}"
            raise_bad_record(file, what, index, record, problem, hint)
    for key in ("target_new", "target_true"):
        target = rewrite.get(key)
        if not isinstance(target, dict) or not isinstance(target.get("str"), str):
            problem = f"has no requested_rewrite.{key}.str"
            raise_bad_record(file, what, index, record, problem, hint)
    for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            problem = f"has a {key} that is not a list of strings"
            raise_bad_record(file, what, index, record, problem, hint)


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


def load_counterfact_records(
    file: Path | None = None, url: str = COUNTERFACT_URL, **download_kwargs: Any
) -> datasets.Dataset:
    """Load CounterFact's raw ROME records, validated, without the unusable ones.

    ``file`` defaults to the download cache (downloaded if absent). A record whose prompt has
    no ``{}`` slot for its subject, whose target is empty, whose new target equals the true
    one, or whose new target contains the subject (case 485: "Florence is a twin city of" ->
    "Florence") is dropped and counted in the log.
    """
    path = ensure_counterfact_file(file, url=url, **download_kwargs)
    raw = read_json_list(path, "CounterFact file")
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
    log_dropped(path, len(raw), dropped)
    logger.info("loaded %d CounterFact records from %s", len(records), path)
    return datasets.Dataset.from_list(records, features=COUNTERFACT_FEATURES)


def counterfact_samples(
    records: datasets.Dataset | Sequence[Mapping[str, Any]],
    prompt_source: str = "paraphrase",
    file: Path | None = None,
) -> datasets.Dataset:
    """Map validated ROME records (:func:`load_counterfact_records`) to samples.

    Each sample is :func:`counterfact_record_sample`'s; how many prompts fell back to the
    rewrite prompt is logged (naming ``file`` if given).
    """
    _check_prompt_source(prompt_source)
    samples = []
    choices: Counter[str] = Counter()
    for record in records:
        sample, how = _record_sample(record, prompt_source)
        samples.append(sample)
        choices[how] += 1
    _log_prompt_choices(file or Path("CounterFact records"), choices)
    return samples_dataset(samples)


def load_counterfact(
    file: Path | None = None, prompt_source: str = "paraphrase", **kwargs: Any
) -> datasets.Dataset:
    """CounterFact (ROME's format) as context mediation samples.

    ``prompt_source`` picks each sample's prompt (:data:`COUNTERFACT_PROMPT_SOURCES`; see
    :func:`counterfact_record_sample`); ``kwargs`` go to :func:`load_counterfact_records`.
    """
    _check_prompt_source(prompt_source)
    records = load_counterfact_records(file, **kwargs)
    return counterfact_samples(records, prompt_source, file=file or counterfact_cache_file())


# ---------------------------------------------------------------------------------------
# CounterFact in EasyEdit's reduced format.

EASYEDIT_REQUIRED_FIELDS = ("case_id", "prompt", "subject", "target_new", "ground_truth")
EASYEDIT_OPTIONAL_FIELDS = ("rephrase_prompt", "locality_prompt", "locality_ground_truth")


def _usable_easyedit_records(path: Path) -> list[dict[str, Any]]:
    """The records of an EasyEdit-format file, validated, without the unusable ones (counted
    in the log)."""
    raw = read_json_list(path, "CounterFact (EasyEdit format) file")
    what = "CounterFact in EasyEdit's format"
    hint = f"Expected EasyEdit records with fields {', '.join(EASYEDIT_REQUIRED_FIELDS)}."
    records = []
    dropped: dict[str, int] = {}
    for index, record in enumerate(raw):
        if isinstance(record, dict) and "requested_rewrite" in record:
            hint = "It looks like ROME's full format: load it with -d counterfact."
        if not isinstance(record, dict):
            raise_bad_record(path, what, index, record, "is not a JSON object", hint)
        if not isinstance(record.get("case_id"), int | str):
            raise_bad_record(path, what, index, record, "has no case_id", hint)
        for key in EASYEDIT_REQUIRED_FIELDS[1:]:
            if not isinstance(record.get(key), str):
                problem = f"has no string field {key!r}"
                raise_bad_record(path, what, index, record, problem, hint)
        for key in EASYEDIT_OPTIONAL_FIELDS:
            if record.get(key) is not None and not isinstance(record[key], str):
                problem = f"has a {key} that is not a string"
                raise_bad_record(path, what, index, record, problem, hint)
        reason = _unusable_reason(
            record["subject"], record["prompt"], record["target_new"], record["ground_truth"]
        )
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        records.append(record)
    log_dropped(path, len(raw), dropped)
    return records


def _require_easyedit_file(file: Path | None) -> Path:
    if file is None:
        folder = env.shared_data_dir() / "counterfact_easyedit"
        raise errors.MissingFileError(
            "the counterfact_easyedit dataset needs its file: pass --dataset-file PATH, e.g. "
            f"{folder / 'counterfact-train.json'}"
        )
    return Path(file)


def load_counterfact_easyedit(
    file: Path | None = None, prompt_source: str = "paraphrase", **_: Any
) -> datasets.Dataset:
    """CounterFact in EasyEdit's reduced format (e.g. ``counterfact-train.json``) as samples.

    The prompt is the cleaned ``rephrase_prompt`` (in place of ROME's first paraphrase
    prompt) by default, or the rewrite ``prompt`` with ``prompt_source="rewrite"``; see
    :func:`counterfact_record_sample`. A record without ``rephrase_prompt`` uses its rewrite
    prompt (counted in the log).
    """
    _check_prompt_source(prompt_source)
    path = _require_easyedit_file(file)
    samples = []
    choices: Counter[str] = Counter()
    for record in _usable_easyedit_records(path):
        rephrase = record.get("rephrase_prompt")
        prompt, how = _choose_prompt(
            record["subject"], record["prompt"], [rephrase] if rephrase else [], prompt_source
        )
        choices[how] += 1
        sample = counterfact_sample(
            record["case_id"],
            record["subject"],
            prompt,
            record["target_new"],
            record["ground_truth"],
            source="counterfact_easyedit",
            rewrite_prompt=record["prompt"],
        )
        samples.append(sample)
    _log_prompt_choices(path, choices)
    logger.info("loaded %d CounterFact (EasyEdit format) samples from %s", len(samples), path)
    return samples_dataset(samples)


def _rome_record_of_easyedit(record: Mapping[str, Any]) -> dict[str, Any]:
    """An EasyEdit record in ROME's record schema, with what the reduced format holds."""
    subject = record["subject"]
    rephrase, locality = record.get("rephrase_prompt"), record.get("locality_prompt")
    # The locality prompt asks about another entity whose true object is this case's
    # (EasyEdit copies it from ROME's neighborhood prompts); one that names another answer
    # cannot be scored against this case's targets.
    same_truth = (
        record.get("locality_ground_truth", record["ground_truth"]) == record["ground_truth"]
    )
    return {
        "case_id": int(record["case_id"]),
        "pararel_idx": -1,
        "requested_rewrite": {
            # The subject occurs in the prompt (checked): mark each mention as ROME's slot.
            "prompt": record["prompt"].replace(subject, "{}"),
            "relation_id": "",
            "target_new": {"str": record["target_new"], "id": ""},
            "target_true": {"str": record["ground_truth"], "id": ""},
            "subject": subject,
        },
        "paraphrase_prompts": [rephrase] if rephrase else [],
        "neighborhood_prompts": [locality] if locality and same_truth else [],
        "attribute_prompts": [],
        # No generation prompts in this format: generate from the rewrite prompt.
        "generation_prompts": [record["prompt"]],
    }


def load_counterfact_easyedit_records(file: Path | None = None, **_: Any) -> datasets.Dataset:
    """EasyEdit-format CounterFact as ROME-schema records, for the evaluation.

    Each record keeps what the reduced format has: the rewrite (ids empty: the format has no
    Wikidata ids, and no relation id), its ``rephrase_prompt`` as the one paraphrase prompt,
    its ``locality_prompt`` as the one neighborhood prompt (its answer is the case's true
    object), and the rewrite prompt as the one generation prompt (ROME's generation prompts
    are not in the format). There are no attribute prompts, so no replacement entities. The
    same records are dropped as by :func:`load_counterfact_easyedit`, so a case's sample
    (:func:`counterfact_record_sample`) is the one training built from that file.
    """
    path = _require_easyedit_file(file)
    records = [_rome_record_of_easyedit(record) for record in _usable_easyedit_records(path)]
    logger.info("loaded %d CounterFact (EasyEdit format) records from %s", len(records), path)
    return datasets.Dataset.from_list(records, features=COUNTERFACT_FEATURES)


COUNTERFACT_RECORD_LOADERS: dict[str, Callable[..., datasets.Dataset]] = {
    "counterfact": load_counterfact_records,
    "counterfact_easyedit": load_counterfact_easyedit_records,
}
"""Loaders of CounterFact's records in ROME's schema (what the evaluation reads), by the name
of the dataset a training run used."""
