"""What an edit does to generated text: fluency and consistency, and the entity's essence.

- ``generation``: fluency (ROME's weighted n-gram entropy) and consistency (TF-IDF similarity with
  ROME's attribute snippets about the new attribute) of texts sampled from the generation prompts;
- ``essence``: TF-IDF similarity of text about the entity with the method vs. without it, and the
  fluency of that text (REMEDI's essence benchmark).

Generation follows ROME: top-k sampling with k = 5, 100 tokens in all (prompt included), no stop
at the end-of-text token (it is removed from the text), each text with its own seed. The edit is
applied on the prompt pass only; the KV cache carries it to the sampled tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dataclasses_json import DataClassJsonMixin

from remedi import metrics, models
from remedi.evaluation.cases import EvalCase, EvalResources, ResultSettings, result_settings
from remedi.evaluation.methods import Method, applicable_cases
from remedi.evaluation.scoring import clean_generated_text, generate_texts

logger = logging.getLogger(__name__)

ESSENCE_PREFIX = "The following is an excerpt from a Wikipedia article:\n\n"
ESSENCE_TEMPLATE = "{} is"
# Essence references are sampled from the unedited model with their own seed stream, so the
# `unedited` row measures how similar two independent samples are (the ceiling to compare with).
REFERENCE_STREAM = 1


@dataclass
class GenerationCase(DataClassJsonMixin):
    """One case's generated texts and their scores."""

    case_id: int
    prompts: list[str]
    texts: list[str]
    fluency: float
    consistency: float | None


@dataclass
class GenerationResults(DataClassJsonMixin):
    """Fluency and consistency of texts generated from the generation prompts."""

    benchmark: str
    settings: ResultSettings
    fluency: metrics.Metric
    consistency: metrics.Metric | None
    consistency_missing: str | None
    cases: list[GenerationCase]


@dataclass
class EssenceCase(DataClassJsonMixin):
    """One case's text about its entity, the unedited reference, and their similarity."""

    case_id: int
    prompt: str
    text: str
    reference: str
    similarity: float | None
    fluency: float


@dataclass
class EssenceResults(DataClassJsonMixin):
    """Similarity of text about the entity with the method to text without it."""

    benchmark: str
    settings: ResultSettings
    similarity: metrics.Metric | None
    similarity_missing: str | None
    fluency: metrics.Metric
    cases: list[EssenceCase]


def tfidf_missing(resources: EvalResources) -> str | None:
    """Why TF-IDF similarities cannot be computed, or None if they can."""
    if resources.snippets is not None and resources.vectorizer is not None:
        return None
    return resources.missing or "no attribute snippets and TF-IDF tables were loaded"


def generation(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> GenerationResults:
    """Fluency and consistency of texts sampled from each case's generation prompts.

    Consistency is ROME's reference score: TF-IDF similarity of a case's texts (joined) to the
    attribute snippets about entities with the new attribute (joined). Cases without snippets
    are left out of consistency (ROME requires them).
    """
    settings = result_settings(mt, method, cases, resources)
    cases = [case for case in applicable_cases(method, cases) if case.generation_prompts]
    queries = [(case, prompt) for case in cases for prompt in case.generation_prompts]
    texts = generate_texts(
        mt,
        method,
        queries,
        max_length=resources.max_length,
        top_k=resources.top_k,
        seed=resources.seed,
        batch_size=resources.texts_per_batch,
        desc=f"{method.name} generation",
    )
    per_case, start = [], 0
    for case in cases:
        case_texts = texts[start : start + len(case.generation_prompts)]
        start += len(case.generation_prompts)
        consistency = None
        if resources.snippets is not None and resources.vectorizer is not None:
            references = resources.snippets.texts(case.relation_id, case.target_new_id)
            if references:
                consistency = resources.vectorizer.similarity(
                    " ".join(case_texts), " ".join(references)
                )
        per_case.append(
            GenerationCase(
                case_id=case.case_id,
                prompts=[method.rewrite(case, p) for p in case.generation_prompts],
                texts=case_texts,
                fluency=metrics.fluency([case_texts]).mean,
                consistency=consistency,
            )
        )
    missing = tfidf_missing(resources)
    consistencies = [c.consistency for c in per_case if c.consistency is not None]
    without = sum(c.consistency is None for c in per_case)
    if missing is None and without:
        missing = f"{without} of {len(per_case)} cases have no attribute snippets"
        logger.warning("consistency: %s (left out)", missing)
    return GenerationResults(
        benchmark="generation",
        settings=settings,
        fluency=metrics.Metric.aggregate([c.fluency for c in per_case]),
        consistency=metrics.Metric.aggregate(consistencies) if consistencies else None,
        consistency_missing=missing,
        cases=per_case,
    )


def essence_prompt(entity: str) -> str:
    """The prompt whose continuation describes ``entity``."""
    return ESSENCE_PREFIX + ESSENCE_TEMPLATE.format(entity)


def _strip_essence_prefix(text: str) -> str:
    header = clean_generated_text(ESSENCE_PREFIX)
    return text[len(header) :] if text.startswith(header) else text


def essence_references(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> dict[int, str]:
    """Unedited texts about each case's entity, sampled with their own seed stream."""
    texts = generate_texts(
        mt,
        Method(),
        [(case, essence_prompt(case.entity)) for case in cases],
        max_length=resources.max_length,
        top_k=resources.top_k,
        seed=resources.seed,
        batch_size=resources.texts_per_batch,
        stream=REFERENCE_STREAM,
        desc="essence references",
    )
    return {
        case.case_id: _strip_essence_prefix(text) for case, text in zip(cases, texts, strict=True)
    }


def essence(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> EssenceResults:
    """TF-IDF similarity of "{entity} is ..." text with the method to unedited text; fluency.

    Prompt: "The following is an excerpt from a Wikipedia article:\\n\\n{entity} is". The header
    is removed from both texts before comparing.
    """
    settings = result_settings(mt, method, cases, resources)
    cases = applicable_cases(method, cases)
    references = resources.essence_references
    if references is None or any(case.case_id not in references for case in cases):
        references = {**(references or {}), **essence_references(mt, cases, resources)}
        resources.essence_references = references
    texts = generate_texts(
        mt,
        method,
        [(case, essence_prompt(case.entity)) for case in cases],
        max_length=resources.max_length,
        top_k=resources.top_k,
        seed=resources.seed,
        batch_size=resources.texts_per_batch,
        desc=f"{method.name} essence",
    )
    per_case = []
    for case, text in zip(cases, texts, strict=True):
        text = _strip_essence_prefix(text)
        reference = references[case.case_id]
        similarity = (
            resources.vectorizer.similarity(text, reference)
            if resources.vectorizer is not None
            else None
        )
        per_case.append(
            EssenceCase(
                case_id=case.case_id,
                prompt=method.rewrite(case, essence_prompt(case.entity)),
                text=text,
                reference=reference,
                similarity=similarity,
                fluency=metrics.weighted_n_gram_entropy(text),
            )
        )
    similarities = [c.similarity for c in per_case if c.similarity is not None]
    return EssenceResults(
        benchmark="essence",
        settings=settings,
        similarity=metrics.Metric.aggregate(similarities) if similarities else None,
        similarity_missing=None if similarities else tfidf_missing(resources),
        fluency=metrics.Metric.aggregate([c.fluency for c in per_case]),
        cases=per_case,
    )
