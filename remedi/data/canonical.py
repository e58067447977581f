"""The task files of *Model Editing with Canonical Examples* (Hewitt et al. 2024), as text.

Every task has a validation pair and a test pair of files (``<name>-val.jsonl`` and
``<name>-test.jsonl``, in ``<root>/<task>/split/``): the canonical examples to learn from
(``train``), the out-of-distribution evaluation set (``eval``), hard negatives that the edit
must leave alone (``hard_negative``) and unconditional texts about the same subjects
(``unconditional``, the targeted degradation set). The general degradation set is
``val100*.jsonl`` at the root. Lines have one of three shapes:

- ``suffix``: a ``prefix`` and the ``suffix`` that should (or, for ``bad``, should not) follow;
- ``pair``: a ``prefix`` and two suffixes, ``suffix1`` and ``suffix2``;
- ``text``: a whole ``text`` scored token by token.

Each task's files also carry task-specific fields (``country``/``capital``, ``company``/``ceo``,
``bias_answer``, ...): :data:`CANONICAL_TASKS` lists what each file must hold, and each task has
one loader (:func:`load_country_capital`, ...) that checks every line for its fields and
returns :class:`CanonicalExample` rows. New tasks (the toy world's, :mod:`remedi.toy.canonical`)
add one :class:`CanonicalTask` entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from remedi import env, errors

Role = Literal["train", "eval", "hard_negative", "unconditional"]
Split = Literal["val", "test"]
Shape = Literal["suffix", "pair", "text"]

ROLES: tuple[Role, ...] = ("train", "eval", "hard_negative", "unconditional")
SPLITS: tuple[Split, ...] = ("val", "test")
SHAPE_FIELDS: dict[Shape, tuple[str, ...]] = {
    "suffix": ("prefix", "suffix"),
    "pair": ("prefix", "suffix1", "suffix2"),
    "text": ("text",),
}
"""The fields a line of each shape needs to be scored."""

CANONICAL_DIR_NAME = "canonical_examples"
GENERAL_FILES = {"val": "val100-val.jsonl", "test": "val100.jsonl", "short": "val100-short.jsonl"}
"""The general degradation texts (one ``text`` per line) the seed uses, by split. In the public
data ``val100.jsonl`` and ``val100-val.jsonl`` are the same 4,007 texts and ``val100-short.jsonl``
is their first 100 lines."""

KL_TEXTS_SHORT = "short"
"""A task's KL texts given as this name: the data root's ``val100-short.jsonl``."""
SEED_KL_TEXTS = "shared:edit_harms/task-data/test-ClosedDomainQA.jsonl#passage"
"""The KL texts of the seed's tasks here: BoolQ's 2,935 distinct Wikipedia passages (348,728 GPT-2
tokens), a :mod:`remedi.corpora` spec. The seed's KL read OpenWebText training chunks
(``data/trainval-chunked.jsonl``, its ``configs/*/*_sweep/make_sweep.py``, e.g.
``country_capital/pythia_sweep/make_sweep.py:106,161``), which the public data lacks; these share
no text with ``val100*.jsonl``, the set the degradation bound is measured on."""


@dataclass(frozen=True)
class CanonicalExample:
    """One line: ``prefix`` + ``suffix`` (+ ``suffix2`` for pairs), or a whole ``text``.

    For ``text`` lines the prefix is empty and ``suffix`` holds the text. ``subject`` is what
    the example is about where its file says (the country, the company, the person), for
    methods that edit at a subject's tokens (MEMIT).
    """

    prefix: str
    suffix: str
    suffix2: str | None = None
    subject: str | None = None

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class TaskFile:
    """One role's file: its name stem (before ``-val``/``-test``), shape, required fields, and
    the field naming each line's subject (if any)."""

    stem: str
    shape: Shape
    fields: tuple[str, ...] = ()
    subject_field: str | None = None

    def required(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*SHAPE_FIELDS[self.shape], *self.fields)))


@dataclass(frozen=True)
class CanonicalTask:
    """A task: its folder, one file per role, and the seed's loss type and success threshold.

    ``threshold`` is the per-example score above which an evaluation example counts as a
    failure (the seed's ``threshold``; see :mod:`remedi.canon.scoring`). ``kl_texts`` names the
    general text the KL regulariser reads by default: a :mod:`remedi.corpora` spec, or
    :data:`KL_TEXTS_SHORT`; it must not overlap the general texts the bound is measured on.
    """

    name: str
    folder: str
    files: Mapping[Role, TaskFile]
    loss_type: str
    threshold: float
    description: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    kl_texts: str = SEED_KL_TEXTS

    @property
    def pair(self) -> bool:
        return self.files["train"].shape == "pair"

    def path(self, role: Role, split: Split, root: Path | None = None) -> Path:
        """``<root>/<folder>/split/<stem>-<split>.jsonl`` (root: the shared data's folder)."""
        if role not in self.files:
            raise errors.UsageError(
                f"task {self.name} has no {role!r} file; its roles: {', '.join(self.files)}"
            )
        base = canonical_root() if root is None else Path(root)
        return base / self.folder / "split" / f"{self.files[role].stem}-{split}.jsonl"


def canonical_root() -> Path:
    """The real task files: ``$REMEDI_SHARED_DATA/canonical_examples``."""
    return env.shared_data_dir() / CANONICAL_DIR_NAME


def read_canonical_file(
    path: Path, shape: Shape, fields: tuple[str, ...] = (), subject_field: str | None = None
) -> list[CanonicalExample]:
    """Read a JSONL task file; every line must hold the shape's fields and ``fields``.

    Raises:
        MissingFileError: The file is not there.
        FileFormatError: A line is not a JSON object, or lacks a field (named with file and
            line), or a field is not a string.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.MissingFileError(
            f"canonical examples file {path} does not exist; set REMEDI_SHARED_DATA to the "
            "folder holding canonical_examples/ (or pass the task's root)"
        )
    required = tuple(dict.fromkeys((*SHAPE_FIELDS[shape], *fields)))
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise errors.FileFormatError(
                    f"{path}:{number}: not valid JSON ({error.msg}); each line must be one "
                    "JSON object"
                ) from error
            if not isinstance(record, dict):
                raise errors.FileFormatError(
                    f"{path}:{number}: a line must be a JSON object, got {type(record).__name__}"
                )
            missing = [name for name in required if name not in record]
            if missing:
                raise errors.FileFormatError(
                    f"{path}:{number}: missing field {', '.join(map(repr, missing))}; a "
                    f"{shape} line of this file needs {', '.join(required)}"
                )
            wrong = [name for name in SHAPE_FIELDS[shape] if not isinstance(record[name], str)]
            if wrong:
                raise errors.FileFormatError(
                    f"{path}:{number}: field {wrong[0]!r} must be a string, got "
                    f"{type(record[wrong[0]]).__name__}"
                )
            subject = record.get(subject_field) if subject_field else None
            subject = subject if isinstance(subject, str) and subject else None
            if shape == "text":
                examples.append(CanonicalExample("", record["text"]))
            elif shape == "pair":
                examples.append(
                    CanonicalExample(
                        record["prefix"], record["suffix1"], record["suffix2"], subject
                    )
                )
            else:
                examples.append(CanonicalExample(record["prefix"], record["suffix"], None, subject))
    return examples


# ---------------------------------------------------------------------------------------------
# The six tasks, with the seed's loss type and threshold (``configs/test/*.yaml``): the
# threshold is the log of the probability ratio an example must clear (log 5, log 20, ...).

_LOG_5 = 1.6094379124341003
_LOG_20 = 2.995732273553991
_LOG_1_5 = 0.4054651081081646
_NEG_LOG_16 = -2.772588722239781
_NEG_LOG_1000 = -6.907755278982137

_STEREOSET_FIELDS = ("target", "bias_answer", "antibias_answer", "bias_full_eval")
_TEMPORAL_FIELDS = ("entity_string", "summary")


def _seed_task(
    name: str, loss_type: str, threshold: float, description: str, *files: TaskFile
) -> CanonicalTask:
    """A task of the seed: in the folder of its name, ``files`` one per role in :data:`ROLES`."""
    return CanonicalTask(
        name=name,
        folder=name,
        files=dict(zip(ROLES, files, strict=True)),
        loss_type=loss_type,
        threshold=threshold,
        description=description,
    )


CANONICAL_TASKS: dict[str, CanonicalTask] = {
    task.name: task
    for task in (
        _seed_task(
            "country_capital",
            "good",
            _LOG_5,
            "a country's capital after a passage about it",
            TaskFile("country_capital_fixed", "suffix", ("country", "capital"), "country"),
            TaskFile("country_capital_clear_eval", "suffix", ("country", "capital")),
            TaskFile("country_capital_hard_neg", "suffix", ("country", "other_city")),
            TaskFile("country_capital_unconditional", "text"),
        ),
        _seed_task(
            "company_ceo",
            "good",
            _LOG_20,
            "a company's CEO",
            TaskFile("company_ceo_train", "suffix", ("company", "ceo"), "company"),
            TaskFile("company_ceo_eval_clear", "suffix", ("company", "ceo")),
            TaskFile("company_ceo_hard_neg_eval_clear", "suffix", ("company", "ceo")),
            TaskFile("company_ceo_unconditional", "text"),
        ),
        _seed_task(
            "pronoun_gender_bias",
            "balance",
            _LOG_1_5,
            "he and she equally likely after a profession",
            TaskFile("pronoun_gender_bias_train", "pair"),
            TaskFile("pronoun_gender_bias_eval", "pair"),
            TaskFile("pronoun_gender_bias_hard_neg_eval", "suffix"),
            TaskFile("pronoun_gender_bias_unconditional", "text"),
        ),
        _seed_task(
            "temporal",
            "good",
            _LOG_20,
            "recent facts about entities",
            TaskFile("temporal_train", "suffix", _TEMPORAL_FIELDS),
            TaskFile("temporal_eval_clear", "suffix", _TEMPORAL_FIELDS),
            TaskFile("temporal_hard_neg_eval_clear", "suffix", _TEMPORAL_FIELDS),
            TaskFile("temporal_unconditional", "text", _TEMPORAL_FIELDS),
        ),
        _seed_task(
            "stereoset",
            "bad",
            _NEG_LOG_1000,
            "a stereotype made unlikely",
            TaskFile("stereoset_train", "suffix", _STEREOSET_FIELDS, "target"),
            TaskFile("stereoset_eval_clear", "suffix", _STEREOSET_FIELDS),
            TaskFile("stereoset_hard_neg", "suffix"),
            TaskFile("stereoset_unconditional", "text", _STEREOSET_FIELDS),
        ),
        _seed_task(
            "verb_conjugation",
            "good-v-bad",
            _NEG_LOG_16,
            "the verb agreeing with its subject",
            TaskFile("verb_conjugation_train", "pair"),
            TaskFile("verb_conjugation_eval", "pair"),
            TaskFile("verb_conjugation_hard_neg_eval", "suffix"),
            TaskFile("verb_conjugation_eval_unconditional", "text"),
        ),
    )
}
"""The seed's six tasks; :mod:`remedi.toy.canonical` registers the toy world's."""


def register_task(task: CanonicalTask) -> CanonicalTask:
    """Add ``task`` to :data:`CANONICAL_TASKS` (a name may be registered once)."""
    if task.name in CANONICAL_TASKS:
        raise errors.UsageError(f"a canonical task named {task.name!r} is already registered")
    CANONICAL_TASKS[task.name] = task
    return task


def canonical_task(name: str) -> CanonicalTask:
    """The registered task ``name``; raises naming the known tasks."""
    if name not in CANONICAL_TASKS:
        raise errors.UsageError(
            f"unknown canonical task {name!r}; known tasks: {', '.join(CANONICAL_TASKS)}"
        )
    return CANONICAL_TASKS[name]


def load_task_file(
    task: str | CanonicalTask, role: Role, split: Split, root: Path | None = None
) -> list[CanonicalExample]:
    """One role's file of ``task`` for ``split`` (``root``: default the shared data's)."""
    spec = canonical_task(task) if isinstance(task, str) else task
    task_file = spec.files.get(role)
    if task_file is None:
        raise errors.UsageError(f"task {spec.name} has no {role!r} file")
    return read_canonical_file(
        spec.path(role, split, root), task_file.shape, task_file.fields, task_file.subject_field
    )


TaskLoader = Callable[..., list[CanonicalExample]]


def _loader(name: str) -> TaskLoader:
    def load(role: Role, split: Split, root: Path | None = None) -> list[CanonicalExample]:
        return load_task_file(name, role, split, root)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"The {name} task's ``role`` file of ``split`` (see CANONICAL_TASKS[{name!r}])."
    return load


load_country_capital = _loader("country_capital")
load_company_ceo = _loader("company_ceo")
load_pronoun_gender_bias = _loader("pronoun_gender_bias")
load_temporal = _loader("temporal")
load_stereoset = _loader("stereoset")
load_verb_conjugation = _loader("verb_conjugation")

TASK_LOADERS: dict[str, TaskLoader] = {
    "country_capital": load_country_capital,
    "company_ceo": load_company_ceo,
    "pronoun_gender_bias": load_pronoun_gender_bias,
    "temporal": load_temporal,
    "stereoset": load_stereoset,
    "verb_conjugation": load_verb_conjugation,
}
"""One loader per real task (the registry of this data family)."""


def load_general_texts(
    split: str = "val", root: Path | None = None, limit: int | None = None
) -> list[CanonicalExample]:
    """The seed's general degradation texts: ``val100-val.jsonl`` (val), ``val100.jsonl``
    (test) or ``val100-short.jsonl`` (short); the first ``limit`` lines if given."""
    if split not in GENERAL_FILES:
        raise errors.UsageError(
            f"unknown general text split {split!r}; use one of {', '.join(GENERAL_FILES)}"
        )
    base = canonical_root() if root is None else Path(root)
    texts = read_canonical_file(base / GENERAL_FILES[split], "text")
    return texts[:limit] if limit is not None else texts
