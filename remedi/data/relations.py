"""Prompts about an entity's *other* relations, from a CounterFact-format dataset's own templates.

Relation specificity asks whether an edit of one fact about an entity ("Alice works as a pilot")
leaves its other facts alone ("Alice lives in ..."). CounterFact-format data has no prompts
about a case's subject under other relations, but it has, across its records, templates for
every relation (``requested_rewrite.prompt``, ``"{} is a citizen of"``): filled with the case's
subject, the templates of the *other* relations are such prompts. Training's relation term
(:func:`remedi.training.editing_loss`, ``lam_rel``) and the relation-specificity benchmark
(:func:`remedi.evaluation.relation_specificity`) both read them from here.

What counts as one relation:

- records with a relation id (ROME's format, the toy world's export): the id;
- records without one (EasyEdit's reduced format): templates whose answers overlap are one
  relation. Two templates are linked when more than :data:`ANSWER_OVERLAP` of the smaller one's
  answers (true and new targets over the dataset) are the other's, and a relation is a connected
  set of linked templates. On EasyEdit's ``counterfact-train.json`` this gives 8 relations of
  215 templates (places and organisations 141, languages 21, instruments/genres/positions 19,
  fields of work 10, titles 8, occupations 7, organisations joined 5, religions 4): coarser than
  ROME's 34 relation ids, so fewer prompts count as "other", never a paraphrase of the edited one.

A relation that the edited one implies (the toy world's nationality -> language) is not "other":
the edit should change it; pass those pairs as ``implied``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

ANSWER_OVERLAP = 0.2
"""Templates without relation ids sharing more than this share of the smaller one's answers are
one relation."""
DEFAULT_MAX_RELATION_PROMPTS = 4
"""Prompts about other relations per sample, by default (training's relation term)."""


@dataclass(frozen=True)
class RelationFact:
    """What one CounterFact-format record says about relations: its template and answers."""

    relation_id: str
    template: str
    """The rewrite prompt with ``{}`` for the subject."""
    answers: tuple[str, ...]
    """The record's true and new targets."""


def facts_of_records(records: Iterable[Mapping]) -> list[RelationFact]:
    """The :class:`RelationFact` of each ROME-schema record (``requested_rewrite``)."""
    facts = []
    for record in records:
        rewrite = record["requested_rewrite"]
        facts.append(
            RelationFact(
                relation_id=str(rewrite.get("relation_id") or ""),
                template=rewrite["prompt"],
                answers=(rewrite["target_true"]["str"], rewrite["target_new"]["str"]),
            )
        )
    return facts


@dataclass(frozen=True)
class RelationTemplates:
    """The templates of each relation of a dataset, most used first, and how to find a
    record's relation."""

    templates: dict[str, list[str]]
    """Relation -> its templates (with ``{}``), most used first, then alphabetically."""
    relation_of_template: dict[str, str]
    implied: dict[str, frozenset[str]] = field(default_factory=dict)
    """Relation -> the relations an edit of it should change (never "other")."""

    @classmethod
    def from_facts(
        cls,
        facts: Iterable[RelationFact],
        implied: Mapping[str, Collection[str]] | None = None,
    ) -> RelationTemplates:
        facts = list(facts)
        uses: Counter[str] = Counter(fact.template for fact in facts)
        relation_of_template: dict[str, str] = {}
        for fact in facts:
            if fact.relation_id:
                relation_of_template.setdefault(fact.template, fact.relation_id)
        unlabelled = [fact for fact in facts if fact.template not in relation_of_template]
        relation_of_template.update(_answer_groups(unlabelled))
        templates: dict[str, list[str]] = {}
        for template in sorted(uses, key=lambda t: (-uses[t], t)):
            templates.setdefault(relation_of_template[template], []).append(template)
        return cls(
            templates=dict(sorted(templates.items())),
            relation_of_template=relation_of_template,
            implied={key: frozenset(value) for key, value in (implied or {}).items()},
        )

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping], implied: Mapping[str, Collection[str]] | None = None
    ) -> RelationTemplates:
        """From ROME-schema records (:func:`remedi.data.load_counterfact_records`, the toy
        export, or EasyEdit's records as :func:`load_counterfact_easyedit_records` reads them)."""
        return cls.from_facts(facts_of_records(records), implied)

    def relation(self, relation_id: str, template: str) -> str:
        """The relation of a record: its id, else its template's (a template the dataset does
        not hold is a relation of its own)."""
        return relation_id or self.relation_of_template.get(template, template)

    def other_relations(self, relation: str) -> list[str]:
        """The relations other than ``relation`` and those it implies, in sorted order."""
        skip = {relation, *self.implied.get(relation, ())}
        return [other for other in self.templates if other not in skip]

    def other_prompts(
        self,
        subject: str,
        relation_id: str,
        template: str,
        max_prompts: int | None = None,
        per_relation: int | None = None,
    ) -> list[str]:
        """Prompts about ``subject`` under the other relations (see :meth:`labelled_prompts`)."""
        labelled = self.labelled_prompts(subject, relation_id, template, max_prompts, per_relation)
        return [prompt for _, prompt in labelled]

    def labelled_prompts(
        self,
        subject: str,
        relation_id: str,
        template: str,
        max_prompts: int | None = None,
        per_relation: int | None = None,
    ) -> list[tuple[str, str]]:
        """``(relation, prompt)`` about ``subject`` under each relation other than the record's:
        each other relation's most used template first, then each one's second, and so on, up
        to ``per_relation`` templates of each and ``max_prompts`` in all (None: no limit)."""
        relation = self.relation(relation_id, template)
        others = self.other_relations(relation)
        rounds = max((len(self.templates[other]) for other in others), default=0)
        if per_relation is not None:
            rounds = min(rounds, per_relation)
        prompts = [
            (other, self.templates[other][index].format(subject))
            for index in range(rounds)
            for other in others
            if index < len(self.templates[other])
        ]
        return prompts if max_prompts is None else prompts[:max_prompts]

    def prompts_by_sample_id(
        self, records: Iterable[Mapping], max_prompts: int | None = DEFAULT_MAX_RELATION_PROMPTS
    ) -> dict[str, list[str]]:
        """``counterfact/<case_id>`` -> :meth:`other_prompts` of the record's subject."""
        prompts = {}
        for record in records:
            rewrite = record["requested_rewrite"]
            prompts[f"counterfact/{record['case_id']}"] = self.other_prompts(
                rewrite["subject"],
                str(rewrite.get("relation_id") or ""),
                rewrite["prompt"],
                max_prompts,
            )
        return prompts


def _answer_groups(facts: Iterable[RelationFact]) -> dict[str, str]:
    """Template -> the name of its relation (its group's most used template), for templates
    without a relation id: connected sets of templates whose answers overlap (see the module)."""
    answers: dict[str, set[str]] = {}
    uses: Counter[str] = Counter()
    for fact in facts:
        answers.setdefault(fact.template, set()).update(fact.answers)
        uses[fact.template] += 1
    parent = {template: template for template in answers}

    def root(template: str) -> str:
        while parent[template] != template:
            template = parent[template]
        return template

    ordered = sorted(answers)
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            shared = len(answers[first] & answers[second])
            if shared > ANSWER_OVERLAP * min(len(answers[first]), len(answers[second])):
                parent[root(first)] = root(second)
    members: dict[str, list[str]] = {}
    for template in ordered:
        members.setdefault(root(template), []).append(template)
    names = {}
    for group in members.values():
        name = min(group, key=lambda t: (-uses[t], t))
        names.update({template: name for template in group})
    return names
