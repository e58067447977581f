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

Methods are a registry (:data:`METHODS`): a suite takes any registered method by name through
:func:`build_method`. Registered here: ``remedi`` and the baselines ``prefix``, ``replace``,
``unedited``.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from remedi import editors, errors, hooks, metrics, models, precompute, training
from remedi.evaluation.cases import DEFAULT_BATCH_SIZE, EvalCase, EvalResources

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


class WeightEditMethod(Method, abc.ABC):
    """A method that edits weights: subclasses compute the new values of some parameters.

    :meth:`applied` writes them into the model in place, and on exit (also on error) copies the
    saved originals back, so that every parameter is bit-identical to before. An edit that
    returns a parameter's own tensor (an alias of the unedited model) is refused.
    """

    edits_weights = True

    @abc.abstractmethod
    def new_weights(self, mt: models.ModelAndTokenizer, case: EvalCase) -> dict[str, torch.Tensor]:
        """New values, by parameter name (as in ``model.named_parameters()``), for ``case``."""

    @contextlib.contextmanager
    def applied(self, mt: models.ModelAndTokenizer, case: EvalCase) -> Iterator[None]:
        parameters = dict(mt.model.named_parameters())
        new = self.new_weights(mt, case)
        unknown = sorted(set(new) - set(parameters))
        if unknown:
            raise KeyError(f"{self.name} edits parameters the model does not have: {unknown}")
        for name, value in new.items():
            if value.data_ptr() == parameters[name].data_ptr():
                raise ValueError(
                    f"{self.name} returned the unedited tensor of {name} as its edit; return a "
                    "new tensor (e.g. weight + delta)"
                )
            if value.shape != parameters[name].shape:
                raise ValueError(
                    f"{self.name} edit of {name} has shape {tuple(value.shape)}, the parameter "
                    f"{tuple(parameters[name].shape)}"
                )
        saved = {name: parameters[name].detach().clone() for name in new}
        try:
            with torch.no_grad():
                for name, value in new.items():
                    parameters[name].copy_(value)
            yield
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    parameters[name].copy_(original)


class PrefixMethod(Method):
    """Prepend the case's context sentence to every prompt, other entities' prompts included.

    As REMEDI's reference: ``context.rstrip(". ") + ". " + prompt``, the whole rewrite sentence
    (not only "{entity} {attribute}", which loses the words before the subject). Generated texts
    show the prompt without the prefix, so that the prefix's own words do not count towards
    consistency or fluency (a deliberate difference: the reference scores them).
    """

    name = "prefix"
    label = "Prefix"

    def details(self) -> dict[str, str]:
        return {"prefix": "context"}

    @staticmethod
    def prefix(case: EvalCase) -> str:
        """The text prepended to each prompt about ``case``."""
        return case.context.rstrip(". ") + ". "

    def rewrite(self, case: EvalCase, prompt: str) -> str:
        return self.prefix(case) + prompt

    def visible(self, case: EvalCase, prompt: str) -> str:
        return prompt


class ReplaceMethod(Method):
    """Replace the entity by another entity known to have the new attribute."""

    name = "replace"
    label = "Replace"

    def __init__(self, replacements: Mapping[int, str]):
        self.replacements = dict(replacements)

    def details(self) -> dict[str, str]:
        return {"replacements": str(len(self.replacements))}

    def rewrite(self, case: EvalCase, prompt: str) -> str:
        replacement = self.replacements.get(case.case_id)
        if replacement is None:
            raise KeyError(
                f"case {case.case_id} has no replacement entity; evaluate replace only on "
                "cases find_replacements() covers"
            )
        return prompt.replace(case.entity, replacement)


class RemediMethod(Method):
    """Add the editor's direction at the (last token of the) last mention of the entity.

    Prompts that do not mention the case's entity (neighborhood prompts) get no direction: the
    hook still runs on them, so a leak through padding or positions would show in the scores.
    """

    name = "remedi"
    label = "REMEDI"

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        editor: editors.Editor,
        cases: Sequence[EvalCase],
        source: str = "",
        alpha: float = editors.DEFAULT_ALPHA,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        self.editor = editor
        self.alpha = alpha
        self.source = source
        self.label = f"REMEDI (L{editor.layer})"
        directions = editors.editor_directions(
            mt, editor, [case.sample() for case in cases], batch_size=batch_size
        )
        self.directions = {case.case_id: row for case, row in zip(cases, directions, strict=True)}

    def details(self) -> dict[str, str]:
        return {
            "editor_type": self.editor.config.editor_type,
            "layer": str(self.editor.layer),
            "alpha": str(self.alpha),
            "editors_dir": self.source,
            # A retrained editor in the same directory must not reuse the old results.
            "weights_sha256": editor_fingerprint(self.editor),
        }

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
            self.editor.config.edit_last_entity_token,
        )
        directions = torch.stack([self.directions[case.case_id] for case in cases])
        directions = directions.to(device=device, dtype=models.determine_dtype(mt.model))
        with hooks.add_directions(
            mt.model, self.editor.layer, directions, ranges.to(device), self.alpha
        ):
            yield


def editor_fingerprint(editor: editors.Editor) -> str:
    """SHA-256 (first 16 hex digits) of the editor's config and weights."""
    digest = hashlib.sha256(editor.config.to_json(sort_keys=True).encode())
    for name, tensor in sorted(editor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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
    if isinstance(method, ReplaceMethod):
        return [case for case in cases if case.case_id in method.replacements]
    return list(cases)


# ---------------------------------------------------------------------------------------------
# The registry.

MethodFactory = Callable[..., Method]
"""``factory(mt, cases, resources, **options) -> Method``."""

METHODS: dict[str, MethodFactory] = {}
"""Methods by name; :func:`build_method` builds one for a set of cases."""

BASELINES = ("prefix", "replace", "unedited")
"""The registered methods that need nothing trained."""


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: register ``factory`` under ``name`` in :data:`METHODS`."""

    def register(factory: MethodFactory) -> MethodFactory:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = factory
        return factory

    return register


def build_method(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    **options: Any,
) -> Method:
    """Build registered method ``name`` for ``cases`` (options are the factory's keywords)."""
    if name not in METHODS:
        raise errors.UsageError(
            f"unknown method {name!r}; registered methods: {', '.join(METHODS)}"
        )
    return METHODS[name](mt, cases, resources, **options)


@register_method("unedited")
def unedited(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    """The model as it is."""
    return Method()


@register_method("prefix")
def prefix(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    """The context sentence prepended to every prompt (:class:`PrefixMethod`)."""
    return PrefixMethod()


@register_method("replace")
def replace(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    """The entity replaced by one that has the new attribute (:class:`ReplaceMethod`)."""
    facts = resources.world.subjects_by_fact() if resources.world is not None else None
    return ReplaceMethod(find_replacements(cases, facts, resources.snippets, seed=resources.seed))


@register_method("remedi")
def remedi(
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    editors_dir: Path | None = None,
    layer: int | None = None,
    editor_type: str = "linear",
    editor: editors.Editor | None = None,
    alpha: float = editors.DEFAULT_ALPHA,
) -> Method:
    """A trained REMEDI editor: from a training run (``editors_dir``, ``layer``) or given."""
    if editor is None:
        if editors_dir is None:
            raise errors.UsageError(
                "the remedi method needs trained editors: pass editors_dir (a training run, "
                "e.g. results/editors_counterfact_toy) or an editor"
            )
        if layer is None:
            layer = run_editor_layer(Path(editors_dir), editor_type)
        editor = training.load_run_editor(Path(editors_dir), layer, editor_type, mt)
    source = str(Path(editors_dir).resolve()) if editors_dir is not None else ""
    return RemediMethod(
        mt, editor, cases, source=source, alpha=alpha, batch_size=resources.batch_size
    )


def run_editor_layer(run_directory: Path, editor_type: str = "linear") -> int:
    """The layer of a run's only finished editor of ``editor_type``; raises if not exactly one."""
    available = training.list_run_editors(run_directory).get(editor_type, [])
    if len(available) == 1:
        return available[0]
    raise errors.UsageError(
        f"{run_directory} has finished {editor_type} editors for layers {available or 'none'}; "
        "choose one with -l LAYER"
    )
