"""Text corpora by name: the plain text that key statistics (ROME's and MEMIT's ``C``) run on.

A corpus is a name, a key and ways to count and read its texts (:class:`Corpus`): its first
texts, or a seeded random sample of them (:meth:`Corpus.sample`, as ROME's and MEMIT's
statistics draw theirs). The key identifies
the texts themselves and is part of every cache computed from them, so that statistics of one
corpus are never taken for another's. A spec string names a corpus; its kind is the part before
the first colon when that is a registered kind (:data:`CORPORA`), else it is a Hugging Face
dataset:

- ``toy``: the training text of the toy world whose LM is being edited (the world is found from
  the model's name, :func:`remedi.toy.build.toy_world_of_model`); ``toy:NAME`` names the world
  (``toy:toy-small``). Key: a hash of the texts.
- ``file:PATH``: texts on this machine: a ``.txt`` file (one text per non-empty line), a
  ``.jsonl`` or ``.json`` file of records with a ``text`` field, or a folder written by
  ``datasets.Dataset.save_to_disk`` (its ``text`` column). Key: a hash of the file's bytes.
  ``file:PATH#FIELD`` reads another field of a JSON file's records, each distinct value once, in
  order of first appearance (passages that several questions share count once); the field is
  part of the key.
- ``shared:PATH[#FIELD]``: ``file:`` for a path under the shared data folder
  (``$REMEDI_SHARED_DATA``), so that a hyperparameter file can name a corpus on any machine;
  e.g. ``shared:edit_harms/task-data/test-ClosedDomainQA.jsonl#passage``, BoolQ's 3,270 questions'
  Wikipedia passages (what SmolLM2's statistics use: the text here closest to ROME's Wikipedia).
- ``hf:NAME[:CONFIG]``, or any other ``NAME[:CONFIG]`` (e.g. ``wikipedia:20200501.en``, what ROME
  used): the ``text`` column of the dataset's ``train`` split, through ``datasets.load_dataset``
  (a hub name, cached on this machine when offline, or a local dataset folder). Key: the name and
  config, as a released dataset's name denotes its texts (and a cache of statistics over a
  sample of it, hours of compute, is found without loading the dataset); a local folder's adds a
  hash of its files. A dataset's texts are its rows, empty ones included in :attr:`Corpus.size`
  and left out when read (ROME's sampler draws rows too).

Adding a kind is one function ``(argument, model) -> Corpus`` and one entry in :data:`CORPORA`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from remedi import errors
from remedi.toy import build
from remedi.toy.corpus import training_documents
from remedi.toy.popularity import world_tiers

CORPUS_FLAG = "--stats-dataset"
"""The command-line flag that names a statistics corpus (named in errors)."""
CORPUS_HELP = (
    "toy (the text of the edited toy model's world), toy:WORLD, file:PATH (.txt, .jsonl, .json or "
    "a save_to_disk folder; PATH#FIELD: a JSON field other than 'text'), shared:PATH (the same "
    "under $REMEDI_SHARED_DATA) or a Hugging Face text dataset NAME[:CONFIG]"
)
"""What a corpus spec may be, for the help of the flag that takes one."""
TOY_KIND = "toy"
HF_KIND = "hf"
TEXT_COLUMN = "text"
SAMPLE_SEED = 1
"""The seed of ROME's and MEMIT's sample of their statistics corpus (``random_sample=1``,
kmeng01/rome rome/layer_stats.py:149, kmeng01/memit rome/layer_stats.py:150)."""
REFERENCE_CORPUS = "wikipedia:20200501.en"
"""ROME's and MEMIT's statistics corpus (kmeng01/rome rome/layer_stats.py:39,96-99)."""


@dataclass(frozen=True)
class Corpus:
    """Texts to compute statistics over, with what identifies them."""

    name: str
    """The spec it was opened from, resolved: ``toy:toy-small``, ``file:/data/notes.txt``."""
    key: str
    """Identifies the texts (a hash, or a released dataset's name): caches are keyed by it."""
    read: Callable[[int], list[str]]
    """Reads at most the first ``n`` texts."""
    size: Callable[[], int]
    """How many texts it holds (a dataset: its rows, empty ones included)."""
    read_at: Callable[[Sequence[int]], list[str]]
    """The texts at these positions (below :attr:`size`), in this order; a dataset's empty
    rows left out."""

    def texts(self, num_texts: int) -> list[str]:
        """The corpus's first ``num_texts`` texts (all of them if it has fewer)."""
        return list(self.read(num_texts))[:num_texts]

    def sample(self, num_texts: int, seed: int = SAMPLE_SEED) -> list[str]:
        """``num_texts`` texts drawn at random, without replacement, read in corpus order; all
        of them, as :meth:`texts`, when the corpus holds no more.

        The draw is ROME's and MEMIT's (kmeng01/rome util/runningstats.py:1551-1556, the same
        in kmeng01/memit): Python's ``random.Random(seed)`` shuffles every position and the
        first ``num_texts`` are kept, so with :data:`SAMPLE_SEED` the rows of a dataset are
        the rows their statistics read. (They read them in the shuffled order; a sum over
        them differs only by rounding.)
        """
        total = self.size()
        if total <= num_texts:
            return self.texts(num_texts)
        return self.read_at(sorted(sampled_positions(total, num_texts, seed)))

    def is_sampled(self, num_texts: int) -> bool:
        """Whether :meth:`sample` draws from the corpus (it holds more than ``num_texts``)."""
        return self.size() > num_texts


def sampled_positions(total: int, count: int, seed: int) -> list[int]:
    """The first ``count`` of the positions ``0..total-1`` shuffled by ``random.Random(seed)``."""
    positions = list(range(total))
    random.Random(seed).shuffle(positions)
    return positions[:count]


CorpusOpener = Callable[[str, str | None], Corpus]
"""``(argument after the kind, model name or None) -> Corpus``."""


def texts_key(texts: Iterable[str]) -> str:
    """SHA-256 (16 hex digits) of the texts, each length-prefixed (so no two lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def files_key(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file's bytes, or of a folder's files (names and bytes)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def listed_corpus(name: str, key: str, load: Callable[[], list[str]]) -> Corpus:
    """A corpus whose texts ``load`` returns as one list (read again for every use)."""

    def read_at(positions: Sequence[int]) -> list[str]:
        texts = load()
        return [texts[position] for position in positions]

    return Corpus(name, key, lambda count: load()[:count], lambda: len(load()), read_at)


def from_texts(name: str, texts: Sequence[str]) -> Corpus:
    """A corpus of texts already in memory (keyed by their hash, so ``name`` is only a label)."""
    held = list(texts)
    return listed_corpus(name, f"{name}@{texts_key(held)}", lambda: held)


def toy_corpus(world_name: str, model: str | None = None) -> Corpus:
    """The training text of toy world ``world_name`` (empty: the world of ``model``).

    A long-tail world's text states each entity's facts as often as its popularity tier does,
    as the text its LM was trained on.

    Raises:
        errors.UsageError: No world named, and ``model`` is not a toy world's LM.
        errors.MissingFileError: The world is not built.
    """
    if not world_name:
        paths = build.toy_world_of_model(model) if model is not None else None
        if paths is None:
            raise errors.UsageError(
                f"corpus {TOY_KIND!r} is the text of the edited model's toy world, but "
                f"{model!r} is not a toy world's model; pass {CORPUS_FLAG} "
                f"{TOY_KIND}:NAME (e.g. toy:toy-small), file:PATH or NAME[:CONFIG] (a Hugging "
                "Face text dataset)"
            )
        world_name = paths.name
    paths = build.toy_world_paths(world_name)
    if not paths.world_file.is_file():
        raise errors.MissingFileError(
            f"corpus {TOY_KIND}:{world_name} needs the toy world file {paths.world_file}; build "
            f"the world first (python -m scripts.build_toy, or load the model {world_name!r})"
        )
    world = build.load_world(world_name)
    texts = [document.text for document in training_documents(world, tiers=world_tiers(world))]
    return listed_corpus(
        f"{TOY_KIND}:{world_name}", f"{TOY_KIND}:{world_name}@{texts_key(texts)}", lambda: texts
    )


def file_corpus(path_text: str, model: str | None = None) -> Corpus:
    """Texts in a local file or a ``save_to_disk`` folder (see the module's description).

    Raises:
        errors.MissingFileError: Nothing at the path.
        errors.UsageError: A file of another kind, or records without a ``text`` field (or the
            ``#FIELD`` asked for).
    """
    path_text, field = _split_field(path_text)
    path = Path(path_text).expanduser()
    if not path.exists():
        raise errors.MissingFileError(
            f"no corpus file at {path}; pass {CORPUS_FLAG} file:PATH with a .txt, .jsonl or .json "
            "file, or a folder written by datasets' save_to_disk"
        )
    if path.is_dir():

        def load_folder() -> datasets.Dataset:
            try:
                loaded = datasets.load_from_disk(str(path))
            except FileNotFoundError as error:
                raise errors.UsageError(
                    f"corpus folder {path} was not written by datasets' save_to_disk ({error}); "
                    "pass the folder save_to_disk wrote, or a .txt, .jsonl or .json file"
                ) from error
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise errors.UsageError(
                        f"corpus folder {path} holds splits {sorted(loaded)} but no 'train'; "
                        "save the split to read with save_to_disk"
                    )
                loaded = loaded["train"]
            return loaded

    elif path.suffix == ".txt":

        def load_texts() -> list[str]:
            lines = path.read_text(encoding="utf-8").splitlines()
            return [line for line in lines if line.strip()]

    elif path.suffix in (".jsonl", ".json"):

        def load_texts() -> list[str]:
            texts = _json_texts(path, field or TEXT_COLUMN)
            return list(dict.fromkeys(texts)) if field else texts

    else:
        raise errors.UsageError(
            f"cannot read corpus file {path}: expected a .txt (a text per line), .jsonl or "
            ".json (records with a 'text' field) file, or a save_to_disk folder"
        )
    if field and (path.is_dir() or path.suffix == ".txt"):
        raise errors.UsageError(
            f"corpus {path_text}#{field}: a #FIELD applies to .json and .jsonl records only; "
            "drop it for a .txt file or a save_to_disk folder (they are read as text)"
        )
    resolved = path.resolve()
    suffix = f"#{field}" if field else ""
    name, key = f"file:{resolved}{suffix}", f"file:{resolved.name}{suffix}@{files_key(path)}"
    if path.is_dir():
        return dataset_corpus(name, key, load_folder, f"file:{path}")
    return listed_corpus(name, key, load_texts)


def shared_corpus(path_text: str, model: str | None = None) -> Corpus:
    """A ``file:`` corpus at ``path_text`` under the shared data folder (``$REMEDI_SHARED_DATA``).

    Raises:
        errors.MissingFileError: Nothing there (the message names the folder and its variable).
    """
    from remedi import env

    relative, field = _split_field(path_text)
    path = env.shared_data_dir() / relative
    if not path.exists():
        raise errors.MissingFileError(
            f"no corpus file {relative!r} under the shared data folder {env.shared_data_dir()}; "
            "set REMEDI_SHARED_DATA to the folder that holds it, or pass "
            f"{CORPUS_FLAG} file:PATH with the file's own path"
        )
    return file_corpus(f"{path}#{field}" if field else str(path), model)


def _split_field(path_text: str) -> tuple[str, str]:
    """``PATH#FIELD`` -> (PATH, FIELD); a path without ``#`` -> (path, "")."""
    path, hash_sign, field = path_text.rpartition("#")
    if not hash_sign or not field or "/" in field:
        return path_text, ""
    return path, field


def hf_corpus(spec: str, model: str | None = None) -> Corpus:
    """The ``text`` column of the ``train`` split of Hugging Face dataset ``NAME[:CONFIG]``.

    The dataset is loaded when the texts are first read (a cached statistics file needs none).
    ``NAME`` may be a local dataset folder (data files ``load_dataset`` reads); its key then
    hashes the folder's files, since a folder's contents, unlike a release, can change.
    """
    name = spec.partition(":")[0]
    local = Path(name).expanduser()
    key = f"{spec}@{files_key(local)}" if name and local.exists() else spec

    def load() -> datasets.Dataset:
        config = spec.partition(":")[2]
        try:
            return datasets.load_dataset(name, config or None, split="train")
        except Exception as error:  # datasets raises many kinds (network, missing config, ...)
            raise errors.UsageError(
                f"cannot load the corpus {spec!r} ({type(error).__name__}: {error}); pass "
                f"{CORPUS_FLAG} NAME[:CONFIG] with a Hugging Face text dataset that is cached on "
                f"this machine (ROME's and MEMIT's statistics read {REFERENCE_CORPUS}), "
                f"file:PATH with local texts, or {TOY_KIND} on a toy world"
            ) from error

    return dataset_corpus(spec, key, load, spec)


def dataset_corpus(name: str, key: str, load: Callable[[], datasets.Dataset], label: str) -> Corpus:
    """The ``text`` column of the dataset ``load`` returns, loaded once, when first needed
    (``label`` names the corpus in errors). Its texts are its rows, empty ones left out when
    read."""
    loaded = functools.cache(load)

    def column() -> datasets.Dataset:
        dataset = loaded()
        if TEXT_COLUMN not in dataset.column_names:
            raise errors.UsageError(
                f"corpus {label!r} has no {TEXT_COLUMN!r} column (columns: "
                f"{dataset.column_names}); pass {CORPUS_FLAG} with a text dataset"
            )
        return dataset

    def read(count: int) -> list[str]:
        # Empty texts (wikitext's blank lines) are skipped; read ahead so that count remain.
        rows = column().select(range(min(len(column()), 4 * count)))
        return _nonempty(rows[TEXT_COLUMN])[:count]

    return Corpus(
        name,
        key,
        read,
        lambda: len(column()),
        lambda positions: _nonempty(column().select(positions)[TEXT_COLUMN]),
    )


CORPORA: dict[str, CorpusOpener] = {
    TOY_KIND: toy_corpus,
    "file": file_corpus,
    "shared": shared_corpus,
    HF_KIND: hf_corpus,
}
"""Registry: corpus kind -> the function that opens a corpus of that kind."""


def open_corpus(spec: str, model: str | None = None) -> Corpus:
    """The corpus ``spec`` names (see the module's description); ``model`` is the name of the
    model the statistics are for, which ``toy`` needs to find its world.

    Raises:
        errors.UsageError: An empty spec, or one its kind cannot open (the message says why).
    """
    if not spec.strip():
        raise errors.UsageError(
            f"empty corpus name; pass {CORPUS_FLAG} {TOY_KIND}[:WORLD], file:PATH or NAME[:CONFIG]"
        )
    kind, _, argument = spec.partition(":")
    if kind in CORPORA:
        return CORPORA[kind](argument, model)
    return CORPORA[HF_KIND](spec, model)


def _nonempty(texts: Iterable[object]) -> list[str]:
    return [text for text in texts if isinstance(text, str) and text.strip()]


def _json_texts(path: Path, field: str = TEXT_COLUMN) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise errors.UsageError(
                    f"corpus file {path}, line {number}, is not valid JSON ({error.msg}); each "
                    'line of a .jsonl file must be one record such as {"text": "..."}'
                ) from error
    else:
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as error:
            raise errors.UsageError(f"corpus file {path} is not valid JSON: {error}") from error
    if not isinstance(records, list) or not all(
        isinstance(record, dict) and isinstance(record.get(field), str) for record in records
    ):
        raise errors.UsageError(
            f"corpus file {path} must hold records with a {field!r} string field, e.g. "
            f'{{"{field}": "..."}} per line (.jsonl) or a list of them (.json)'
        )
    return [record[field] for record in records if record[field].strip()]
