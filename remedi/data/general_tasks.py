"""The eight general-ability task sets of *Model Editing Harms General Abilities* (Gu et al. 2024).

One loader per file format, each returning text items (dataclasses), in file order:

==============  ==========================  ===============================================
task            file                        format
==============  ==========================  ===============================================
reasoning       test-reasoning.jsonl        GSM8K: ``question``, ``answer`` (``... #### 18``)
nli             test-NLI.tsv                RTE: ``index, sentence1, sentence2, label``
open_qa         test-OpenDomainQA.jsonl     NQ: ``question``, ``answer`` (list), ``output``
closed_qa       test-ClosedDomainQA.jsonl   BoolQ: ``question, title, answer, passage``
dialogue        test-dialogue/dev_*.txt     MuTual: ``article, options`` (4), ``answers``
summarization   test-summarization.json     SAMSum: a JSON list of ``id, summary, dialogue``
ner             test-NER.txt                CoNLL-2003 columns ``word POS chunk tag``
sentiment       test-SentimentAnalysis.tsv  SST-2: ``sentence, label`` (0/1)
==============  ==========================  ===============================================

A malformed file raises :class:`remedi.errors.FileFormatError` naming the file, the row and
the missing column.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remedi import errors

TASK_FILES = {
    "reasoning": "test-reasoning.jsonl",
    "nli": "test-NLI.tsv",
    "open_qa": "test-OpenDomainQA.jsonl",
    "closed_qa": "test-ClosedDomainQA.jsonl",
    "dialogue": "test-dialogue",
    "summarization": "test-summarization.json",
    "ner": "test-NER.txt",
    "sentiment": "test-SentimentAnalysis.tsv",
}
"""Each task's file (or folder, for dialogue) under the harms paper's ``task-data/``."""

GSM8K_ANSWER_MARK = "#### "
NER_TYPES = ("PER", "LOC", "ORG", "MISC")


@dataclass(frozen=True)
class ReasoningItem:
    """A GSM8K problem: the worked solution before ``####`` is the seed's hint."""

    question: str
    hint: str
    answer: str


@dataclass(frozen=True)
class NliItem:
    premise: str
    hypothesis: str
    entailment: bool


@dataclass(frozen=True)
class OpenQaItem:
    question: str
    answers: tuple[str, ...]
    passage: str
    """The first of the record's ``output`` texts (the seed shows it as the passage)."""


@dataclass(frozen=True)
class ClosedQaItem:
    question: str
    title: str
    passage: str
    answer: bool


@dataclass(frozen=True)
class DialogueItem:
    item_id: str
    article: str
    options: tuple[str, ...]
    answer: str
    """The correct option's letter, ``A`` to ``D``."""


@dataclass(frozen=True)
class SummaryItem:
    item_id: str
    dialogue: str
    summary: str


@dataclass(frozen=True)
class NerSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]
    """BIO tags (``B-PER``, ``I-LOC``, ``O``, ...), one per word."""


@dataclass(frozen=True)
class SentimentItem:
    sentence: str
    positive: bool


def _bad(file: Path, row: int | str, problem: str) -> errors.FileFormatError:
    return errors.FileFormatError(f"{file}, row {row}: {problem}; fix or drop that row")


def _require(record: Any, columns: Sequence[str], file: Path, row: int | str) -> None:
    if not isinstance(record, dict):
        raise _bad(file, row, f"is a {type(record).__name__}, not an object")
    missing = [column for column in columns if column not in record]
    if missing:
        raise _bad(file, row, f"missing column(s) {', '.join(missing)}")


def _check_file(file: Path) -> Path:
    file = Path(file)
    if not file.exists():
        raise errors.MissingFileError(
            f"task file not found: {file} (the harms paper's task-data; see shared/data/README.md)"
        )
    return file


def _json_lines(file: Path) -> Iterator[tuple[int, Any]]:
    with _check_file(file).open(encoding="utf-8") as lines:
        for row, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except json.JSONDecodeError as error:
                raise _bad(file, row, f"is not valid JSON ({error.msg})") from error


def _tsv_rows(file: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with _check_file(file).open(encoding="utf-8", newline="") as handle:
        # A quote is text here (RTE's sentences quote speech), never a field delimiter.
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise errors.FileFormatError(f"{file} is empty; expected a header {columns}")
        missing = [column for column in columns if column not in header]
        if missing:
            raise errors.FileFormatError(
                f"{file}, row 1 (header): missing column(s) {', '.join(missing)}; "
                f"expected tab-separated columns {', '.join(columns)}"
            )
        for row, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) < len(header):
                absent = header[len(values) :]
                raise _bad(file, row, f"missing column(s) {', '.join(absent)}")
            yield row, dict(zip(header, values, strict=False))


def load_reasoning(file: Path) -> list[ReasoningItem]:
    """GSM8K problems; the answer is the text after ``#### `` in ``answer``."""
    items = []
    for row, record in _json_lines(file):
        _require(record, ("question", "answer"), file, row)
        if GSM8K_ANSWER_MARK not in record["answer"]:
            raise _bad(file, row, f"its answer has no {GSM8K_ANSWER_MARK!r} before the result")
        hint, answer = record["answer"].split(GSM8K_ANSWER_MARK, 1)
        items.append(ReasoningItem(record["question"], hint, answer.strip()))
    return items


def load_nli(file: Path) -> list[NliItem]:
    """RTE pairs; ``label`` is ``entailment`` or ``not_entailment``."""
    items = []
    for row, values in _tsv_rows(file, ("sentence1", "sentence2", "label")):
        label = values["label"].strip()
        if label not in ("entailment", "not_entailment"):
            raise _bad(file, row, f"label {label!r} is not entailment or not_entailment")
        items.append(NliItem(values["sentence1"], values["sentence2"], label == "entailment"))
    return items


def load_open_qa(file: Path) -> list[OpenQaItem]:
    """NQ questions with their answer list and the first ``output`` text as passage."""
    items = []
    for row, record in _json_lines(file):
        _require(record, ("question", "answer", "output"), file, row)
        answers, outputs = record["answer"], record["output"]
        if not isinstance(answers, list) or not answers:
            raise _bad(file, row, "'answer' is not a non-empty list")
        passage = outputs[0] if isinstance(outputs, list) and outputs else str(outputs)
        items.append(OpenQaItem(record["question"], tuple(map(str, answers)), passage))
    return items


def load_closed_qa(file: Path) -> list[ClosedQaItem]:
    """BoolQ questions with their passage and a true/false answer."""
    items = []
    for row, record in _json_lines(file):
        _require(record, ("question", "title", "answer", "passage"), file, row)
        if not isinstance(record["answer"], bool):
            raise _bad(file, row, f"'answer' is {record['answer']!r}, not true or false")
        items.append(
            ClosedQaItem(record["question"], record["title"], record["passage"], record["answer"])
        )
    return items


def _dialogue_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    return int(match.group(1)) if match else -1


def load_dialogue(folder: Path) -> list[DialogueItem]:
    """MuTual items, one per ``dev_<n>.txt`` (a JSON object), ordered by ``n`` as the seed reads
    them (``dev_1`` .. ``dev_886``)."""
    folder = _check_file(folder)
    files = sorted(folder.glob("*.txt"), key=_dialogue_number)
    if not files:
        raise errors.FileFormatError(f"{folder} has no dev_<n>.txt files (MuTual format)")
    items = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            try:  # The seed reads these with eval(): accept Python literals too.
                record = ast.literal_eval(text)
            except (ValueError, SyntaxError) as error:
                raise _bad(path, 1, "is neither JSON nor a Python literal") from error
        _require(record, ("article", "options", "answers"), path, 1)
        options = record["options"]
        if not isinstance(options, list) or len(options) != 4:
            raise _bad(path, 1, "'options' is not a list of four responses")
        if record["answers"] not in ("A", "B", "C", "D"):
            raise _bad(path, 1, f"'answers' is {record['answers']!r}, not a letter A-D")
        item_id = str(record.get("id", path.stem))
        items.append(DialogueItem(item_id, record["article"], tuple(options), record["answers"]))
    return items


def load_summarization(file: Path) -> list[SummaryItem]:
    """SAMSum dialogues with their reference summaries."""
    records = json.loads(_check_file(file).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise errors.FileFormatError(f"{file} is not a JSON list of {{id, summary, dialogue}}")
    items = []
    for row, record in enumerate(records):
        _require(record, ("id", "summary", "dialogue"), file, row)
        items.append(SummaryItem(str(record["id"]), record["dialogue"], record["summary"]))
    return items


def load_ner(file: Path) -> list[NerSentence]:
    """CoNLL-2003 sentences (blank-line separated ``word POS chunk tag`` lines).

    ``-DOCSTART-`` lines are document separators, not sentences, and are skipped (the seed keeps
    them as one-word sentences without entities; it also drops a last sentence that has no
    blank line after it, which this loader keeps).
    """
    sentences = []
    words: list[str] = []
    tags: list[str] = []
    with _check_file(file).open(encoding="utf-8") as lines:
        for row, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                if words:
                    sentences.append(NerSentence(tuple(words), tuple(tags)))
                words, tags = [], []
                continue
            if len(fields) != 4:
                missing = ("word", "POS", "chunk", "tag")[len(fields) :]
                problem = f"missing column(s) {', '.join(missing)}" if missing else "has extra ones"
                raise _bad(file, row, f"{problem} (CoNLL-2003 has 4: word POS chunk tag)")
            if fields[0] == "-DOCSTART-":
                continue
            tag = fields[3]
            if tag != "O" and not re.fullmatch(r"[BI]-(PER|LOC|ORG|MISC)", tag):
                raise _bad(file, row, f"tag {tag!r} is not O or B-/I- of PER, LOC, ORG, MISC")
            words.append(fields[0])
            tags.append(tag)
    if words:
        sentences.append(NerSentence(tuple(words), tuple(tags)))
    return sentences


def load_sentiment(file: Path) -> list[SentimentItem]:
    """SST-2 sentences with label 1 (positive) or 0 (negative)."""
    items = []
    for row, values in _tsv_rows(file, ("sentence", "label")):
        label = values["label"].strip()
        if label not in ("0", "1"):
            raise _bad(file, row, f"label {label!r} is not 0 or 1")
        items.append(SentimentItem(values["sentence"], label == "1"))
    return items


TASK_LOADERS: dict[str, Callable[[Path], Sequence[Any]]] = {
    "reasoning": load_reasoning,
    "nli": load_nli,
    "open_qa": load_open_qa,
    "closed_qa": load_closed_qa,
    "dialogue": load_dialogue,
    "summarization": load_summarization,
    "ner": load_ner,
    "sentiment": load_sentiment,
}
"""One loader per task; each takes the task's file (folder for dialogue) under ``task-data/``."""


def load_task(task: str, task_dir: Path) -> Sequence[Any]:
    """Load ``task`` from the harms paper's ``task-data`` folder ``task_dir``."""
    if task not in TASK_LOADERS:
        raise errors.UsageError(f"unknown task {task!r}; known: {', '.join(TASK_LOADERS)}")
    return TASK_LOADERS[task](Path(task_dir) / TASK_FILES[task])
