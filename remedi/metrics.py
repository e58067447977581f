"""Metrics for judging an edit: pure functions on probabilities and strings.

The definitions follow ROME's CounterFact evaluation (Meng et al. 2022), which REMEDI reuses:

- **efficacy** score and magnitude: ``mean[p_new > p_true]`` and ``mean[p_new - p_true]``, where
  ``p`` is the probability the evaluation scored a target with (by default ROME's: ``exp`` of the
  mean log-probability of the target's tokens; see ``remedi.evaluation.cases.TARGET_SCORINGS``);
- **neighborhood** score: ``mean[p_true > p_new]`` on prompts about *other* entities;
- **fluency**: ROME's weighted n-gram entropy of generated text;
- **consistency** and **essence**: TF-IDF cosine similarity between texts, with ROME's
  vocabulary and IDF table (``tfidf_vocab.json``, ``idf.npy``) and ``attribute_snippets.json``.

Where this module differs from ROME's code, and why:

- How a target is scored is the caller's choice, named in every result: ROME's mean per-token
  log-likelihood (the default), the whole target's, or the first token's (REMEDI's reference).
  The three agree whenever both targets have one token (the toy world; most of CounterFact's
  GPT-2 targets).
- ROME tokenises words for the n-gram entropy with ``nltk.word_tokenize``, which needs the
  ``punkt`` model download. We work offline, so :func:`word_tokenize` splits sentences with a
  small rule (end punctuation followed by a capitalised word, except after a few common
  abbreviations) and then applies the same NLTK word tokenizer ``word_tokenize`` uses. The result
  equals NLTK's whenever the sentence boundaries agree with punkt's.
- TF-IDF vectors are computed here in numpy with the semantics of scikit-learn's
  ``TfidfVectorizer`` that ROME loads (lowercase, tokens ``(?u)\\b\\w\\w+\\b``, raw counts times
  IDF, L2 norm), so that scikit-learn is not a dependency. A text with no word in the vocabulary
  has similarity 0 to everything (ROME's division by a zero norm would give NaN).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dataclasses_json import DataClassJsonMixin
from nltk.tokenize import NLTKWordTokenizer

from remedi import errors

# ROME's default n-gram entropy settings: bigrams and trigrams, weighted 2/3 and 4/3.
FLUENCY_NS = (2, 3)
FLUENCY_WEIGHTS = (2 / 3, 4 / 3)

# Where ROME publishes its consistency-metric files (for error messages: we never download here).
ROME_DATA_URL = "https://rome.baulab.info/data/dsets"

ProbabilityLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Metric(DataClassJsonMixin):
    """A metric aggregated over cases: its mean, standard deviation and per-case values."""

    mean: float
    std: float
    values: list[float] = field(default_factory=list)

    @staticmethod
    def aggregate(values: Sequence[float] | np.ndarray) -> Metric:
        """Summarise per-case values; an empty input gives NaN mean and std."""
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 0:
            return Metric(mean=math.nan, std=math.nan, values=[])
        return Metric(
            mean=float(array.mean()), std=float(array.std()), values=[float(v) for v in array]
        )


@dataclass(frozen=True)
class ScoreAndMagnitude(DataClassJsonMixin):
    """How often one target beats another (score) and by how much probability (magnitude)."""

    score: Metric
    magnitude: Metric


def _per_case_arrays(
    probabilities: Sequence[ProbabilityLike] | np.ndarray,
) -> list[np.ndarray]:
    """Turn a flat array (one value per case) or a ragged list (values per case) into arrays."""
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 1:
        return [np.asarray([value], dtype=np.float64) for value in probabilities]
    cases = []
    for case in probabilities:
        array = np.asarray(case, dtype=np.float64).reshape(-1)
        cases.append(array)
    return cases


def compare_probabilities(
    p_winner: Sequence[ProbabilityLike] | np.ndarray,
    p_loser: Sequence[ProbabilityLike] | np.ndarray,
) -> ScoreAndMagnitude:
    """Score ``mean[p_winner > p_loser]`` and magnitude ``mean[p_winner - p_loser]``.

    Each argument is either one probability per case, or a list with several probabilities per
    case (e.g. one per paraphrase prompt). Values are first averaged within a case, then across
    cases, as in ROME and REMEDI, so a case with many prompts weighs as much as a case with one.
    Ties count as failures.
    """
    winners, losers = _per_case_arrays(p_winner), _per_case_arrays(p_loser)
    if len(winners) != len(losers):
        raise ValueError(
            f"got probabilities for {len(winners)} cases on one side and {len(losers)} on the "
            "other; pass one entry per case on both sides"
        )
    scores, magnitudes = [], []
    for index, (winner, loser) in enumerate(zip(winners, losers, strict=True)):
        if winner.shape != loser.shape:
            raise ValueError(
                f"case {index} has {winner.size} probabilities on one side and {loser.size} "
                "on the other; each prompt needs both targets' probabilities"
            )
        if winner.size == 0:
            raise ValueError(f"case {index} has no probabilities; drop the case or add prompts")
        scores.append(float(np.mean(winner > loser)))
        magnitudes.append(float(np.mean(winner - loser)))
    return ScoreAndMagnitude(score=Metric.aggregate(scores), magnitude=Metric.aggregate(magnitudes))


def efficacy(
    p_new: Sequence[ProbabilityLike] | np.ndarray,
    p_true: Sequence[ProbabilityLike] | np.ndarray,
) -> ScoreAndMagnitude:
    """Efficacy (or paraphrase) score ``mean[p_new > p_true]`` and magnitude ``mean[p_new - p_true]``."""
    return compare_probabilities(p_new, p_true)


def neighborhood(
    p_true: Sequence[ProbabilityLike] | np.ndarray,
    p_new: Sequence[ProbabilityLike] | np.ndarray,
) -> ScoreAndMagnitude:
    """Neighborhood score ``mean[p_true > p_new]`` (ROME), magnitude ``mean[p_true - p_new]``.

    Measured on prompts about other entities that truly have ``target_true``: a specific edit
    leaves them preferring the true value.
    """
    return compare_probabilities(p_true, p_new)


def mean_and_spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and standard deviation (n - 1) of the values that are present (not None or NaN), as
    a cell aggregated over runs shows them; None where there are too few (none; one for the
    deviation)."""
    present = [value for value in values if value is not None and not math.isnan(value)]
    mean = statistics.fmean(present) if present else None
    spread = statistics.stdev(present) if len(present) > 1 else None
    return mean, spread


def share(flags: Sequence[bool] | np.ndarray) -> float:
    """Fraction of true values (NaN for an empty input)."""
    array = np.asarray(flags, dtype=bool).reshape(-1)
    return float(array.mean()) if array.size else math.nan


# ---------------------------------------------------------------------------------------------
# Fluency: weighted n-gram entropy.

_WORD_TOKENIZER = NLTKWordTokenizer()
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "mt",
        "ft",
        "inc",
        "ltd",
        "co",
        "corp",
        "vs",
    }
)


def _split_sentences(text: str) -> list[str]:
    """Split at end punctuation followed by a capitalised word, except after an abbreviation."""
    sentences: list[str] = []
    start = 0
    for boundary in _SENTENCE_END.finditer(text):
        candidate = text[start : boundary.start()]
        last_word = candidate.rsplit(maxsplit=1)[-1] if candidate.strip() else ""
        stem = last_word.rstrip(".").lower()
        if last_word.endswith(".") and (stem in _ABBREVIATIONS or len(stem) == 1):
            continue  # "Mr. Smith", "J. Doe": not a sentence end
        sentences.append(text[start : boundary.end()])
        start = boundary.end()
    sentences.append(text[start:])
    return [sentence for sentence in sentences if sentence.strip()]


def word_tokenize(text: str) -> list[str]:
    """Split text into words like ``nltk.word_tokenize``, without the ``punkt`` data download.

    NLTK's function splits sentences with punkt, then each sentence with ``NLTKWordTokenizer``
    (which only detaches a period at the end of its input). We use the same word tokenizer after a
    rule-based sentence split; see the module docstring for the difference.
    """
    return [
        token for sentence in _split_sentences(text) for token in _WORD_TOKENIZER.tokenize(sentence)
    ]


def n_gram_entropy(tokens: Sequence[str], n: int) -> float:
    """Base-2 entropy of the frequency distribution of the ``n``-grams in ``tokens`` (0 if none)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not counts:
        return 0.0
    frequencies = np.fromiter(counts.values(), dtype=np.float64)
    frequencies /= frequencies.sum()
    return float(-(frequencies * np.log2(frequencies)).sum())


def weighted_n_gram_entropy(
    text: str, ns: Sequence[int] = FLUENCY_NS, weights: Sequence[float] = FLUENCY_WEIGHTS
) -> float:
    """ROME's fluency of one text: the mean over ``ns`` of ``weight_n * entropy_n``."""
    if len(ns) != len(weights) or not ns:
        raise ValueError(f"need one weight per n-gram order; got ns={ns}, weights={weights}")
    tokens = word_tokenize(text)
    entropies = [weight * n_gram_entropy(tokens, n) for n, weight in zip(ns, weights, strict=True)]
    return float(np.mean(entropies))


def fluency(
    generations: Sequence[str] | Sequence[Sequence[str]],
    ns: Sequence[int] = FLUENCY_NS,
    weights: Sequence[float] = FLUENCY_WEIGHTS,
) -> Metric:
    """Fluency per case: mean weighted n-gram entropy of its generated texts.

    ``generations`` has one entry per case: a text, or a list of texts (averaged within the case).
    """
    per_case = []
    for case in generations:
        texts = [case] if isinstance(case, str) else list(case)
        if not texts:
            raise ValueError("a case has no generated text; generate at least one per case")
        per_case.append(float(np.mean([weighted_n_gram_entropy(t, ns, weights) for t in texts])))
    return Metric.aggregate(per_case)


# ---------------------------------------------------------------------------------------------
# TF-IDF similarity (consistency, essence).

# scikit-learn's default token pattern: words of two or more word characters.
TFIDF_TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")


class TfidfVectorizer:
    """TF-IDF vectors with a fixed vocabulary and IDF table, as scikit-learn computes them.

    ``vocabulary`` maps a lowercase word to its column (ROME's ``tfidf_vocab.json``); ``idf`` holds
    one weight per column (ROME's ``idf.npy``). A text's vector is its in-vocabulary word counts
    times the IDF, scaled to unit L2 norm (left at zero when no word is in the vocabulary).
    """

    def __init__(self, vocabulary: Mapping[str, int], idf: np.ndarray | Sequence[float]):
        idf_array = np.asarray(idf, dtype=np.float64).reshape(-1)
        if vocabulary and max(vocabulary.values()) >= idf_array.size:
            raise errors.FileFormatError(
                f"the TF-IDF vocabulary has column {max(vocabulary.values())} but the IDF table "
                f"has only {idf_array.size} entries; the vocabulary and idf files do not match"
            )
        self.vocabulary = dict(vocabulary)
        self.idf = idf_array

    @classmethod
    def from_files(cls, vocab_file: Path, idf_file: Path) -> TfidfVectorizer:
        """Load ROME's ``tfidf_vocab.json`` and ``idf.npy``; a missing file says where to get it."""
        for path in (Path(vocab_file), Path(idf_file)):
            if not path.is_file():
                raise errors.MissingFileError(_missing_rome_file_message(path))
        vocabulary = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        if not isinstance(vocabulary, dict):
            raise errors.FileFormatError(
                f"{vocab_file} should be a JSON object {{word: column}}, got {type(vocabulary).__name__}"
            )
        return cls(vocabulary, np.load(idf_file, allow_pickle=False))

    @property
    def size(self) -> int:
        """Number of columns of the vectors."""
        return int(self.idf.size)

    def tokenize(self, text: str) -> list[str]:
        """Lowercase words of two or more word characters (scikit-learn's default analyzer)."""
        return TFIDF_TOKEN_PATTERN.findall(text.lower())

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), size)`` array of L2-normalised TF-IDF vectors."""
        vectors = np.zeros((len(texts), self.size), dtype=np.float64)
        for row, text in enumerate(texts):
            columns = [self.vocabulary[w] for w in self.tokenize(text) if w in self.vocabulary]
            if columns:
                vectors[row] = np.bincount(columns, minlength=self.size) * self.idf
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def similarity(self, text_a: str, text_b: str) -> float:
        """Cosine similarity of the two texts' TF-IDF vectors (0 if either has no known word)."""
        vector_a, vector_b = self.transform([text_a, text_b])
        return float(vector_a @ vector_b)


def tfidf_similarity(
    sources: Sequence[str | Sequence[str]],
    references: Sequence[str | Sequence[str]],
    vectorizer: TfidfVectorizer,
) -> Metric:
    """Per-case TF-IDF similarity of the joined source texts to the joined reference texts.

    Used for consistency (generations vs. snippets about the new attribute) and essence
    (generation after the edit vs. before it). Several texts of a case are joined with spaces, as
    ROME does.
    """
    if len(sources) != len(references):
        raise ValueError(
            f"got {len(sources)} cases of generated text but {len(references)} of references"
        )
    similarities = [
        vectorizer.similarity(_join(source), _join(reference))
        for source, reference in zip(sources, references, strict=True)
    ]
    return Metric.aggregate(similarities)


def _join(texts: str | Sequence[str]) -> str:
    return texts if isinstance(texts, str) else " ".join(texts)


# ---------------------------------------------------------------------------------------------
# ROME's attribute snippets.


@dataclass(frozen=True)
class Snippet(DataClassJsonMixin):
    """A Wikipedia-style text about an entity ``name`` that has some attribute."""

    name: str
    text: str


class AttributeSnippets:
    """ROME's ``attribute_snippets.json``: texts about entities, by relation and attribute.

    The file is a list of ``{"relation_id", "target_id", "samples": [{"name", "text"}, ...]}``.
    ``snippets[relation_id][target_id]`` lists the snippets about entities whose ``relation_id``
    has the value ``target_id``; an unknown key gives an empty list.
    """

    def __init__(self, records: Sequence[Mapping[str, object]], source: str = "<memory>"):
        self._by_relation: dict[str, dict[str, list[Snippet]]] = defaultdict(dict)
        for index, record in enumerate(records):
            try:
                relation_id, target_id = str(record["relation_id"]), str(record["target_id"])
                samples = record["samples"]
                if not isinstance(samples, list):
                    raise TypeError("samples is not a list")
                snippets = [Snippet(name=str(s["name"]), text=str(s["text"])) for s in samples]
            except (KeyError, TypeError) as error:
                raise errors.FileFormatError(
                    f"{source}: record {index} is not in ROME's attribute snippets format "
                    '{"relation_id", "target_id", "samples": [{"name", "text"}]}: '
                    f"{str(record)[:200]}"
                ) from error
            self._by_relation[relation_id].setdefault(target_id, []).extend(snippets)

    @classmethod
    def from_file(cls, path: Path) -> AttributeSnippets:
        """Load the snippets file; a missing or malformed file raises an error naming it."""
        path = Path(path)
        if not path.is_file():
            raise errors.MissingFileError(_missing_rome_file_message(path))
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise errors.FileFormatError(
                f"{path} is not valid JSON ({error}); re-download it"
            ) from error
        if not isinstance(records, list):
            raise errors.FileFormatError(
                f"{path} should hold a JSON list of snippet records; re-download it"
            )
        return cls(records, source=str(path))

    def __getitem__(self, relation_id: str) -> Mapping[str, list[Snippet]]:
        return self._by_relation.get(relation_id, {})

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_relation)

    def snippets(self, relation_id: str, target_id: str) -> list[Snippet]:
        """Snippets about entities with value ``target_id`` for ``relation_id`` (maybe empty)."""
        return list(self[relation_id].get(target_id, []))

    def texts(self, relation_id: str, target_id: str) -> list[str]:
        """The texts of :meth:`snippets`."""
        return [snippet.text for snippet in self.snippets(relation_id, target_id)]


def _missing_rome_file_message(path: Path) -> str:
    return (
        f"{path.name} not found at {path}. The consistency and essence metrics need ROME's "
        f"attribute_snippets.json, idf.npy and tfidf_vocab.json: download them from "
        f"{ROME_DATA_URL}/{path.name} into {path.parent}, or use the toy world's copies "
        "(remedi.toy.build.ensure_toy_world(...).attribute_snippets_file and friends)."
    )


# ---------------------------------------------------------------------------------------------
# Binary classification (REMEDI's probing benchmarks report F1 and MCC, as scikit-learn does).


def _confusion(y_true: Sequence[bool] | np.ndarray, y_pred: Sequence[bool] | np.ndarray) -> tuple:
    truth = np.asarray(y_true, dtype=bool).reshape(-1)
    predicted = np.asarray(y_pred, dtype=bool).reshape(-1)
    if truth.shape != predicted.shape:
        raise ValueError(f"got {truth.size} labels but {predicted.size} predictions")
    tp = int(np.sum(truth & predicted))
    tn = int(np.sum(~truth & ~predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    return tp, tn, fp, fn


def f1_score(y_true: Sequence[bool] | np.ndarray, y_pred: Sequence[bool] | np.ndarray) -> float:
    """F1 of the positive class; 0 when there are no true or predicted positives (as sklearn)."""
    tp, _, fp, fn = _confusion(y_true, y_pred)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def constant_positive_f1(positive_rate: float) -> float:
    """F1 of a classifier that calls every sample positive, when ``positive_rate`` of them are:
    ``2 p / (1 + p)``, the F1 that needs no signal at all. F1 of two classifiers compares only
    against the same positive rate; this is the floor to read it against."""
    if not 0 <= positive_rate <= 1:
        raise ValueError(f"positive_rate must be in [0, 1], got {positive_rate}")
    return 2 * positive_rate / (1 + positive_rate)


def matthews_corrcoef(
    y_true: Sequence[bool] | np.ndarray, y_pred: Sequence[bool] | np.ndarray
) -> float:
    """Matthews correlation coefficient; 0 when a margin is empty (as sklearn)."""
    tp, tn, fp, fn = _confusion(y_true, y_pred)
    denominator = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def accuracy(y_true: Sequence[bool] | np.ndarray, y_pred: Sequence[bool] | np.ndarray) -> float:
    """Fraction of predictions equal to the labels (NaN for an empty input)."""
    tp, tn, fp, fn = _confusion(y_true, y_pred)
    total = tp + tn + fp + fn
    return (tp + tn) / total if total else math.nan
