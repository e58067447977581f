"""The :class:`Method` interface: every way of changing the model that a suite can judge.

A method makes the LM act on a case's new attribute, on any prompt about the case. It does so in
one or more of three ways, and a suite calls all three without knowing which one is used:

- it rewrites the prompt's *text* (:meth:`Method.rewrite`; the prefix and replace baselines);
- it edits *hidden states* for one tokenized batch, inside a context manager
  (:meth:`Method.edit`; REMEDI adds its direction at the entity's mention);
- it edits *weights* for one case, inside a context manager that restores the original weights
  exactly on exit (:meth:`Method.applied`; ROME, MEMIT, fine-tuning: see
  :class:`WeightEditMethod`). Such a method sets ``edits_weights``, and suites then run each
  case's prompts under that case's edit, never mixing cases in one forward pass.

The methods themselves are registered in :data:`remedi.methods.registry.METHODS`;
:func:`build_method` makes any of them judgeable on a suite's cases, by what it edits:
:class:`TextMethod`, :class:`RemediMethod` (hidden states), :class:`WeightEditMethod`.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from remedi import editors, errors, hooks, metrics, models, precompute
from remedi.evaluation.cases import DEFAULT_BATCH_SIZE, EvalCase, EvalResources
from remedi.methods import baselines, common, registry
from remedi.methods.base import (
    DirectionEditor,
    MethodSetup,
    WeightEditor,
    WeightUpdate,
    weights_applied,
)
from remedi.methods.remedi import RemediEdit

logger = logging.getLogger(__name__)


class Method:
    """The unedited model; subclasses change the prompt's text, hidden states or weights."""

    name = "unedited"
    label = "Unedited"
    edits_weights = False
    """True if :meth:`applied` edits weights per case (suites then never batch across cases)."""

    def details(self) -> dict[str, str]:
        """What identifies this method's configuration (saved with every result)."""
        return {}

    def rewrite(self, case: EvalCase, prompt: str) -> str:
        """The text the LM reads for a prompt about ``case``."""
        return prompt

    def visible(self, case: EvalCase, prompt: str) -> str:
        """The prompt as it should appear in generated text (e.g. without an added prefix)."""
        return self.rewrite(case, prompt)

    def edit(
        self,
        mt: models.ModelAndTokenizer,
        cases: Sequence[EvalCase],
        prompts: Sequence[str],
        offset_mapping: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> contextlib.AbstractContextManager[Any]:
        """Edit hidden states for one tokenized batch of (rewritten) prompts while inside."""
        return contextlib.nullcontext()

    def applied(
        self, mt: models.ModelAndTokenizer, case: EvalCase
    ) -> contextlib.AbstractContextManager[Any]:
        """Edit the model's weights for ``case`` while inside; restore them exactly on exit."""
        return contextlib.nullcontext()


class WeightEditMethod(Method):
    """A registered weight-editing method (:class:`~remedi.methods.base.WeightEditor`) judged
    per case: each case becomes one edit request (:func:`edit_request`).

    :meth:`applied` writes the case's new weights through
    :func:`~remedi.methods.base.weights_applied` (names and shapes checked, never an alias of the
    unedited tensor) and restores every parameter bit-identically on exit, also on error. Each
    case's update is kept (up to ``max_cached_bytes`` in all; ROME's and MEMIT's factors are
    small) so that every benchmark after the first reapplies it instead of computing it again.
    Updates are kept by the whole edit request, not the case id: a case with the same id and
    another prompt, subject or target gets its own edit.
    """

    edits_weights = True

    def __init__(self, editor: WeightEditor, max_cached_bytes: int = 2**30):
        self.editor = editor
        self.name = editor.name
        self.label = editor.label
        self.max_cached_bytes = max_cached_bytes
        self.updates: dict[common.EditRequest, WeightUpdate] = {}
        self.cached_bytes = 0

    def details(self) -> dict[str, str]:
        return self.editor.details()

    def new_weights(self, mt: models.ModelAndTokenizer, case: EvalCase) -> dict[str, torch.Tensor]:
        """New values, by parameter name (as in ``model.named_parameters()``), for ``case``."""
        request = edit_request(case)
        update = self.updates.get(request)
        if update is None:
            update = self.editor.compute(mt, [request])
            size = update.nbytes()
            if self.cached_bytes + size <= self.max_cached_bytes:
                self.updates[request] = update
                self.cached_bytes += size
        return update.new_weights(mt.model)

    @contextlib.contextmanager
    def applied(self, mt: models.ModelAndTokenizer, case: EvalCase) -> Iterator[None]:
        with weights_applied(mt.model, self.new_weights(mt, case), self.name):
            yield


def edit_request(case: EvalCase) -> common.EditRequest:
    """The edit request of a CounterFact case: its rewrite prompt, entity and new target."""
    return common.EditRequest(
        prompt=case.rewrite_prompt or case.prompt,
        subject=case.entity,
        target_new=case.target_new,
        target_true=case.target_true,
    )


class TextMethod(Method):
    """A registered method that rewrites the prompt's text (``unedited``, ``prefix``,
    ``replace``: :mod:`remedi.methods.baselines`).

    ``replacements`` (case id -> another entity with the new attribute) is what ``replace``
    reads; cases without one are left out of its evaluation (:func:`applicable_cases`).
    """

    def __init__(self, spec: registry.MethodSpec, replacements: Mapping[int, str] | None = None):
        if spec.rewrite is None:
            raise errors.UsageError(f"method {spec.name!r} does not rewrite text")
        self.spec = spec
        self.name = spec.name
        self.label = spec.label
        self.replacements = dict(replacements or {})

    def details(self) -> dict[str, str]:
        if self.spec.needs_replacement:
            return {"replacements": str(len(self.replacements))}
        return dict(self.spec.details)

    def covers(self, case: EvalCase) -> bool:
        """Whether the method can rewrite prompts about ``case``."""
        return not self.spec.needs_replacement or case.case_id in self.replacements

    def rewrite(self, case: EvalCase, prompt: str) -> str:
        assert self.spec.rewrite is not None
        edit = baselines.TextEdit(case.entity, case.context, self.replacements.get(case.case_id))
        return self.spec.rewrite(prompt, edit)

    def visible(self, case: EvalCase, prompt: str) -> str:
        return self.rewrite(case, prompt) if self.spec.shows_rewrite else prompt


class RemediMethod(Method):
    """A hidden-state method (REMEDI: :class:`~remedi.methods.remedi.RemediEdit`): its direction
    for each case, added at the (last token of the) last mention of the entity.

    Prompts that do not mention the case's entity (neighborhood prompts) get no direction: the
    hook still runs on them, so a leak through padding or positions would show in the scores.
    """

    name = "remedi"

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        editor: editors.Editor | DirectionEditor,
        cases: Sequence[EvalCase],
        source: str = "",
        alpha: float = editors.DEFAULT_ALPHA,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        if isinstance(editor, editors.Editor):
            editor = RemediEdit(editor, alpha, source, batch_size)
        self.method = editor
        self.label = editor.label
        directions = editor.directions(mt, [case.sample() for case in cases])
        self.directions = {case.case_id: row for case, row in zip(cases, directions, strict=True)}

    def details(self) -> dict[str, str]:
        return self.method.details()

    @contextlib.contextmanager
    def edit(
        self,
        mt: models.ModelAndTokenizer,
        cases: Sequence[EvalCase],
        prompts: Sequence[str],
        offset_mapping: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> Iterator[None]:
        device = models.determine_device(mt.model)
        ranges = mention_token_ranges(
            prompts,
            [case.entity for case in cases],
            offset_mapping,
            attention_mask,
            self.method.last_token,
        )
        directions = torch.stack([self.directions[case.case_id] for case in cases])
        directions = directions.to(device=device, dtype=models.determine_dtype(mt.model))
        with hooks.add_directions(
            mt.model, self.method.layer, directions, ranges.to(device), self.method.alpha
        ):
            yield


def mention_token_ranges(
    prompts: Sequence[str],
    entities: Sequence[str],
    offset_mapping: torch.Tensor,
    attention_mask: torch.Tensor,
    last_token: bool = True,
) -> torch.Tensor:
    """Padded token ranges of each entity's last mention in its prompt; ``[0, 0)`` if absent.

    ``offset_mapping`` may come from tokenizing a longer text that starts with the prompt.
    """
    starts = [
        prompt.rfind(entity) if entity else -1
        for prompt, entity in zip(prompts, entities, strict=True)
    ]
    found = [index for index, start in enumerate(starts) if start >= 0]
    ranges = torch.zeros(len(prompts), 2, dtype=torch.long)
    if found:
        spans = torch.tensor([[starts[i], starts[i] + len(entities[i])] for i in found])
        found_ranges = precompute.token_ranges_from_char_spans(
            spans, offset_mapping[found].cpu(), attention_mask[found].cpu()
        )
        if last_token:
            found_ranges = precompute.last_token_ranges(found_ranges)
        ranges[found] = found_ranges
    return ranges


def find_replacements(
    cases: Sequence[EvalCase],
    facts: Mapping[tuple[str, str], Sequence[str]] | None = None,
    snippets: metrics.AttributeSnippets | None = None,
    seed: int = 0,
) -> dict[int, str]:
    """For each case, another entity known to have its new attribute (seeded choice).

    Candidates come from ``facts`` (``(relation_id, value) -> subjects``, e.g. a toy world's
    :meth:`~remedi.toy.world.World.subjects_by_fact`: the subjects whose relation has
    ``target_new``), else from ROME's attribute snippets (entities with that relation and target
    id), else from the case's attribute prompts read with the relation's templates. Cases
    without a candidate are left out (and counted in the log).
    """
    rng = random.Random(seed)
    templates = _relation_templates(cases)
    replacements: dict[int, str] = {}
    for case in cases:
        candidates: list[str] = []
        if facts is not None:
            candidates = list(facts.get((case.relation_id, case.target_new), ()))
        if not candidates and snippets is not None:
            candidates = [s.name for s in snippets.snippets(case.relation_id, case.target_new_id)]
        if not candidates:
            candidates = _subjects_of(case.attribute_prompts, templates.get(case.relation_id, []))
        candidates = sorted({name for name in candidates if name and name != case.entity})
        if candidates:
            replacements[case.case_id] = rng.choice(candidates)
    if len(replacements) < len(cases):
        logger.warning(
            "no replacement entity found for %d of %d cases; replace skips them",
            len(cases) - len(replacements),
            len(cases),
        )
    return replacements


def _relation_templates(cases: Sequence[EvalCase]) -> dict[str, list[str]]:
    """Rewrite templates (with ``{}``) seen for each relation."""
    templates: dict[str, set[str]] = {}
    for case in cases:
        rewrite = case.rewrite_prompt or case.prompt
        templates.setdefault(case.relation_id, set()).add(rewrite.replace(case.entity, "{}", 1))
    return {relation: sorted(found) for relation, found in templates.items()}


def _subjects_of(prompts: Sequence[str], templates: Sequence[str]) -> list[str]:
    subjects = []
    for prompt in prompts:
        for template in templates:
            before, _, after = template.partition("{}")
            if prompt.startswith(before) and prompt.endswith(after):
                subject = prompt[len(before) : len(prompt) - len(after)].strip()
                if subject:
                    subjects.append(subject)
                    break
    return subjects


def applicable_cases(method: Method, cases: Sequence[EvalCase]) -> list[EvalCase]:
    """The cases a method can be evaluated on (replace needs a replacement entity)."""
    if isinstance(method, TextMethod):
        return [case for case in cases if method.covers(case)]
    return list(cases)


# ---------------------------------------------------------------------------------------------
# Building a registered method for the cases of a suite.


def judged_methods() -> list[str]:
    """The registered methods :func:`build_method` builds: those that rewrite text or that are
    prepared for a model (trained methods are trained by their own suite)."""
    return [
        name
        for name, spec in registry.METHODS.items()
        if spec.edits == "text" or spec.prepare is not None
    ]


SETUP_OPTIONS = ("stats_dir", "stats_dataset", "stats_num_texts", "editor")
"""Options of :func:`build_method` that say where a method's inputs come from (the others are
hyperparameters)."""


def build_method(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    hparams: Any = None,
    hparams_path: Path | None = None,
    **options: Any,
) -> Method:
    """Registered method ``name`` (:data:`remedi.methods.registry.METHODS`) for ``cases``.

    ``options``: :data:`SETUP_OPTIONS` (key statistics, an editor in memory) and the method's
    hyperparameters by name (e.g. ``editors_dir``, ``layer``, ``alpha`` for ``remedi``).

    Raises:
        errors.UsageError: An unknown method or option; the message lists what there is.
    """
    spec = registry.method_spec(name)
    if spec.edits == "text":
        if (
            hparams is not None
            or hparams_path is not None
            or any(value is not None for value in options.values())
        ):
            raise errors.UsageError(f"method {name!r} rewrites text and takes no options")
        replacements = None
        if spec.needs_replacement:
            world = resources.world
            facts = world.subjects_by_fact() if world is not None else None
            replacements = find_replacements(cases, facts, resources.snippets, seed=resources.seed)
        return TextMethod(spec, replacements)
    setup = MethodSetup(
        batch_size=resources.batch_size,
        **{key: options.pop(key) for key in SETUP_OPTIONS if key in options},
    )
    prepared = registry.prepare(name, mt, setup, hparams, hparams_path, **options)
    if isinstance(prepared, WeightEditor):
        return WeightEditMethod(prepared)
    if spec.edits == "hidden_states":
        return RemediMethod(mt, prepared, cases, batch_size=resources.batch_size)
    raise errors.UsageError(
        f"method {name!r} edits {spec.edits} but gave {type(prepared).__name__}; a weights "
        "method's prepare returns a WeightEditor"
    )
