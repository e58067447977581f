"""CounterFact's probability benchmarks, and relation specificity on any CounterFact-format data.

- ``efficacy``: p(target_new) > p(target_true) on each case's prompt (its sample's prompt: the
  cleaned first paraphrase prompt by default, as REMEDI's reference; ROME's rewrite prompt with
  ``prompt_source="rewrite"``);
- ``paraphrase``: the same on each of the case's paraphrase prompts, averaged within a case;
- ``neighborhood``: p(target_true) > p(target_new) on prompts about *other* entities, run with the
  method attached (REMEDI edits the case entity's mention wherever it occurs; the prefix is
  prepended, so it can leak). Measured, never assumed;
- ``relation_specificity``: with the method applied to entity E, the share of E's *other*
  relations whose top-1 prediction is unchanged (the unedited LM's own top-1 is the reference).
  On the toy world, every training template of every other relation; relations the edit implies
  (nationality -> language) are reported apart, as the share that changed to the implied value.
  On any other CounterFact-format data, one template of each other relation of the dataset,
  filled with E (:class:`remedi.data.RelationTemplates`; no implied relations there).

How a target is scored (mean per-token log-probability by default, as ROME) is a setting
(:data:`~remedi.evaluation.cases.TARGET_SCORINGS`) named in every result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from dataclasses_json import DataClassJsonMixin

from remedi import data, metrics, models, precompute
from remedi.evaluation.cases import EvalCase, EvalResources, ResultSettings, result_settings
from remedi.evaluation.methods import Method, TextMethod, applicable_cases
from remedi.evaluation.scoring import next_token_predictions, target_log_probs
from remedi.toy.world import World

logger = logging.getLogger(__name__)


@dataclass
class CaseProbabilities(DataClassJsonMixin):
    """Probabilities of both targets for each prompt of one case (``exp`` of their scores)."""

    case_id: int
    prompts: list[str]
    p_new: list[float]
    p_true: list[float]


@dataclass
class ProbabilityResults(DataClassJsonMixin):
    """Efficacy, paraphrase or neighborhood: a score, a magnitude, and per-case probabilities."""

    benchmark: str
    settings: ResultSettings
    metrics: metrics.ScoreAndMagnitude
    cases: list[CaseProbabilities]
    prompts_mentioning_entity: int = 0
    """Neighborhood: prompts that mention the edited entity (REMEDI's edit reaches only those)."""


@dataclass
class RelationSpecificityCase(DataClassJsonMixin):
    """Top-1 predictions on one entity's other relations, with the method vs. without it."""

    case_id: int
    prompts: list[str]
    relations: list[str]
    unchanged: list[bool]
    implied_prompts: list[str]
    implied_value: str | None
    implied_hits: list[bool]


@dataclass
class RelationSpecificityResults(DataClassJsonMixin):
    """Share of the entity's other relations left unchanged; implied relations apart."""

    benchmark: str
    settings: ResultSettings
    available: bool
    reason: str | None = None
    unchanged: metrics.Metric | None = None
    implied_changed: metrics.Metric | None = None
    cases: list[RelationSpecificityCase] = field(default_factory=list)


def unscored_method_notes(methods: Sequence[Method], cases: Sequence[EvalCase]) -> list[str]:
    """A note for each method that applies to none of ``cases`` (its row stays empty)."""
    notes = []
    for method in methods:
        if cases and not applicable_cases(method, cases):
            why = (
                "no case has a replacement entity (they come from the toy world, ROME's "
                "attribute snippets, or the cases' attribute prompts)"
                if isinstance(method, TextMethod) and method.spec.needs_replacement
                else "it applies to none of the cases"
            )
            notes.append(f"{method.label}: nothing to score, its row is empty: {why}.")
    return notes


def _probability_benchmark(
    benchmark: str,
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    prompts_of: Callable[[EvalCase], list[str]],
) -> ProbabilityResults:
    settings = result_settings(mt, method, cases, resources)
    cases = [case for case in applicable_cases(method, cases) if prompts_of(case)]
    queries = [
        (case, prompt, target)
        for case in cases
        for prompt in prompts_of(case)
        for target in (case.target_new, case.target_true)
    ]
    log_probs = target_log_probs(
        mt, method, queries, resources.batch_size, resources.target_scoring, desc=benchmark
    )
    probs = np.exp(log_probs).reshape(-1, 2)
    per_case, start = [], 0
    for case in cases:
        count = len(prompts_of(case))
        chunk = probs[start : start + count]
        start += count
        per_case.append(
            CaseProbabilities(
                case_id=case.case_id,
                prompts=[method.rewrite(case, prompt) for prompt in prompts_of(case)],
                p_new=chunk[:, 0].tolist(),
                p_true=chunk[:, 1].tolist(),
            )
        )
    p_new = [c.p_new for c in per_case]
    p_true = [c.p_true for c in per_case]
    if benchmark == "neighborhood":
        scores = metrics.neighborhood(p_true=p_true, p_new=p_new)
    else:
        scores = metrics.efficacy(p_new=p_new, p_true=p_true)
    mentioning = sum(
        case.entity in method.rewrite(case, prompt) for case in cases for prompt in prompts_of(case)
    )
    logger.info("%s %s score %.3f", method.name, benchmark, scores.score.mean)
    return ProbabilityResults(
        benchmark=benchmark,
        settings=settings,
        metrics=scores,
        cases=per_case,
        prompts_mentioning_entity=mentioning if benchmark == "neighborhood" else 0,
    )


def efficacy(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> ProbabilityResults:
    """p(target_new) > p(target_true) on each case's prompt."""
    return _probability_benchmark(
        "efficacy", mt, method, cases, resources, lambda case: [case.prompt]
    )


def paraphrase(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> ProbabilityResults:
    """p(target_new) > p(target_true) on each case's paraphrase prompts."""
    return _probability_benchmark(
        "paraphrase", mt, method, cases, resources, lambda case: case.paraphrase_prompts
    )


def neighborhood(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> ProbabilityResults:
    """p(target_true) > p(target_new) on prompts about other entities, method attached."""
    return _probability_benchmark(
        "neighborhood", mt, method, cases, resources, lambda case: case.neighborhood_prompts
    )


def _world_relation_plans(world: World, cases: Sequence[EvalCase]) -> list[_RelationPlan]:
    """Every training template of the entity's other relations in the toy world; implied
    relations apart."""
    entities = {entity.name: entity for entity in world.entities}
    implications = {(i.if_relation, i.then_relation): i.mapping for i in world.implications}
    plans = []
    for case in cases:
        entity = entities.get(case.entity)
        if entity is None:
            continue
        plan = _RelationPlan(case, [], [], [], None)
        for relation in world.relations:
            if relation.relation_id == case.relation_id or relation.relation_id not in entity.facts:
                continue
            prompts = [template.format(case.entity) for template in relation.train_templates]
            mapping = implications.get((case.relation_id, relation.relation_id))
            if mapping is not None:
                value = mapping.get(case.target_new)
                if value is not None and value != entity.facts[relation.relation_id]:
                    plan.implied_value = value
                    plan.implied_prompts += prompts
                continue
            plan.prompts += prompts
            plan.relations += [relation.relation_id] * len(prompts)
        plans.append(plan)
    return plans


def case_relation_facts(cases: Sequence[EvalCase]) -> list[data.RelationFact]:
    """What the cases say about relations: each one's relation id, rewrite template, targets."""
    return [
        data.RelationFact(
            relation_id=case.relation_id,
            template=(case.rewrite_prompt or case.prompt).replace(case.entity, "{}"),
            answers=(case.target_true, case.target_new),
        )
        for case in cases
    ]


def _template_relation_plans(
    templates: data.RelationTemplates | None, cases: Sequence[EvalCase]
) -> list[_RelationPlan]:
    """One template of each other relation of the dataset, filled with the case's subject."""
    if templates is None:
        templates = data.RelationTemplates.from_facts(case_relation_facts(cases))
    plans = []
    for case, fact in zip(cases, case_relation_facts(cases), strict=True):
        labelled = templates.labelled_prompts(
            case.entity, case.relation_id, fact.template, per_relation=1
        )
        plan = _RelationPlan(case, [p for _, p in labelled], [r for r, _ in labelled], [], None)
        plans.append(plan)
    return plans


@dataclass
class _RelationPlan:
    case: EvalCase
    prompts: list[str]
    relations: list[str]
    implied_prompts: list[str]
    implied_value: str | None


def relation_specificity(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> RelationSpecificityResults:
    """Top-1 predictions on the entity's other relations, with the method vs. without it.

    With a toy world, its training templates of every other relation of the case's entity. A
    relation that an implication ties to the edited one (nationality -> language) should change
    to the implied value; it is scored apart, on cases where the implied value differs from the
    entity's current one. Without one, the most used template of each other relation of the
    dataset (``resources.relation_templates``, else the cases' own rewrite templates), filled with
    the case's subject: a relation the subject does not have still asks the LM something, whose
    unedited answer the edit should leave alone.
    """
    settings = result_settings(mt, method, cases, resources)
    cases = applicable_cases(method, cases)
    if resources.world is not None:
        plans = _world_relation_plans(resources.world, cases)
    else:
        plans = _template_relation_plans(resources.relation_templates, cases)
    queries = [(p.case, prompt) for p in plans for prompt in (*p.prompts, *p.implied_prompts)]
    edited = next_token_predictions(mt, method, queries, resources.batch_size, "relations")
    original = next_token_predictions(mt, Method(), queries, resources.batch_size, "relations")
    results, start = [], 0
    for plan in plans:
        count = len(plan.prompts)
        unchanged = (edited[start : start + count] == original[start : start + count]).tolist()
        start += count
        hits: list[bool] = []
        if plan.implied_prompts:
            implied_id = int(
                precompute.target_token_ids(mt.tokenizer, [plan.implied_value or ""])[0]
            )
            hits = (edited[start : start + len(plan.implied_prompts)] == implied_id).tolist()
            start += len(plan.implied_prompts)
        results.append(
            RelationSpecificityCase(
                case_id=plan.case.case_id,
                prompts=plan.prompts,
                relations=plan.relations,
                unchanged=[bool(flag) for flag in unchanged],
                implied_prompts=plan.implied_prompts,
                implied_value=plan.implied_value,
                implied_hits=[bool(hit) for hit in hits],
            )
        )
    unchanged_metric = metrics.Metric.aggregate(
        [metrics.share(c.unchanged) for c in results if c.unchanged]
    )
    implied_shares = [metrics.share(c.implied_hits) for c in results if c.implied_hits]
    # None, not an empty metric (NaN), where no case has an implied relation (real CounterFact).
    implied_metric = metrics.Metric.aggregate(implied_shares) if implied_shares else None
    return RelationSpecificityResults(
        benchmark="relation_specificity",
        settings=settings,
        available=True,
        unchanged=unchanged_metric,
        implied_changed=implied_metric,
        cases=results,
    )
