"""Evaluation procedures: how well an edit works, what it leaves alone, and what it costs.

A *method* makes the LM act on a CounterFact case's new attribute, on any prompt about the case:

- ``remedi``: a trained editor adds a direction to the entity's mention at its layer
  (:class:`RemediMethod`);
- ``prefix``: the context ``"{entity} {attribute}."`` is prepended to every prompt, no edit;
- ``replace``: the entity is replaced by another entity known to have the new attribute;
- ``unedited``: the model as is.

The baselines are a registry (:data:`BASELINES`), and so are the benchmarks (:data:`BENCHMARKS`),
each a function ``(mt, method, cases, resources) -> result dataclass``:

- ``efficacy`` / ``paraphrase``: p(target_new) > p(target_true) on the rewrite prompt / on the
  paraphrase prompts, probabilities of the whole target under teacher forcing;
- ``neighborhood``: p(target_true) > p(target_new) on prompts about *other* entities, run with the
  method attached (REMEDI edits the case entity's mention wherever it occurs; the prefix is
  prepended, so it can leak). Measured, never assumed;
- ``relation_specificity``: on the toy world, with the method applied to entity E, the share of
  E's *other* relations whose top-1 prediction is unchanged; relations the edit implies
  (nationality -> language) are reported apart, as the share that changed to the implied value;
- ``generation``: fluency (n-gram entropy) and consistency (TF-IDF similarity with ROME's
  attribute snippets about the new attribute) of texts sampled from the generation prompts;
- ``essence``: TF-IDF similarity of text about the entity with the method vs. without it, and
  the fluency of that text.

Generation follows ROME: top-k sampling with k = 5, 100 tokens in all (prompt included), no stop
at the end-of-text token (it is removed from the text), seeded per batch. The edit is applied on
the prompt pass only; the KV cache carries it to the sampled tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import datasets
import numpy as np
import torch
import transformers
from dataclasses_json import DataClassJsonMixin
from tqdm.auto import tqdm

from remedi import data, editors, hooks, io, metrics, models, precompute
from remedi.toy.world import World

logger = logging.getLogger(__name__)

ESSENCE_PREFIX = "The following is an excerpt from a Wikipedia article:\n\n"
ESSENCE_TEMPLATE = "{} is"
GENERATION_MAX_LENGTH = 100
GENERATION_TOP_K = 5
DEFAULT_BATCH_SIZE = 16
# Essence references are sampled from the unedited model with their own seed stream, so the
# `unedited` row measures how similar two independent samples are (the ceiling to compare with).
_REFERENCE_STREAM = 1


# ---------------------------------------------------------------------------------------------
# Cases.


@dataclass(frozen=True)
class EvalCase(DataClassJsonMixin):
    """One CounterFact rewrite with everything the benchmarks ask about it."""

    case_id: int
    entity: str
    relation_id: str
    prompt: str
    """The rewrite prompt with the entity filled in."""
    context: str
    attribute: str
    target_new: str
    target_new_id: str
    target_true: str
    target_true_id: str
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return f"counterfact/{self.case_id}"

    def sample(self) -> dict[str, str]:
        """The case as a context mediation sample (see :mod:`remedi.data`)."""
        return {
            "id": self.sample_id,
            "source": "counterfact",
            "entity": self.entity,
            "prompt": self.prompt,
            "context": self.context,
            "attribute": self.attribute,
            "target_mediated": self.target_new,
            "target_unmediated": self.target_true,
        }


def counterfact_cases(
    records: datasets.Dataset | Sequence[Mapping[str, Any]], ids: Sequence[str] | None = None
) -> list[EvalCase]:
    """Cases from validated ROME records (:func:`remedi.data.load_counterfact_records`).

    With ``ids`` (sample ids ``counterfact/<case_id>``, e.g. a training run's test split), only
    those cases, in that order; an id without a record raises.
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for record in records:
        by_id[f"counterfact/{record['case_id']}"] = record
    if ids is None:
        ids = list(by_id)
    missing = [sample_id for sample_id in ids if sample_id not in by_id]
    if missing:
        raise KeyError(
            f"{len(missing)} sample ids have no CounterFact record (first: {missing[0]!r}); "
            "evaluate with the dataset file the editors were trained on (--dataset-file)"
        )
    cases = []
    for sample_id in ids:
        record = by_id[sample_id]
        rewrite = record["requested_rewrite"]
        sample = data.counterfact_sample(
            record["case_id"],
            rewrite["subject"],
            data.counterfact_prompt(dict(record)),
            rewrite["target_new"]["str"],
            rewrite["target_true"]["str"],
        )
        cases.append(
            EvalCase(
                case_id=int(record["case_id"]),
                entity=sample["entity"],
                relation_id=str(rewrite["relation_id"]),
                prompt=sample["prompt"],
                context=sample["context"],
                attribute=sample["attribute"],
                target_new=rewrite["target_new"]["str"],
                target_new_id=str(rewrite["target_new"]["id"]),
                target_true=rewrite["target_true"]["str"],
                target_true_id=str(rewrite["target_true"]["id"]),
                paraphrase_prompts=list(record["paraphrase_prompts"]),
                neighborhood_prompts=list(record["neighborhood_prompts"]),
                attribute_prompts=list(record["attribute_prompts"]),
                generation_prompts=list(record["generation_prompts"]),
            )
        )
    return cases


@dataclass
class EvalResources:
    """What the benchmarks read besides the model: optional files and generation settings."""

    world: World | None = None
    """The toy world (``world.json``): relation specificity and replacements need it."""
    snippets: metrics.AttributeSnippets | None = None
    vectorizer: metrics.TfidfVectorizer | None = None
    missing: str | None = None
    """Why ``snippets``/``vectorizer`` are absent (shown instead of consistency and essence)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    max_length: int = GENERATION_MAX_LENGTH
    top_k: int = GENERATION_TOP_K
    essence_references: dict[int, str] | None = None
    """Unedited essence texts by case id; sampled on first use when None."""


def load_resources(
    directory: Path | None,
    world_file: Path | None = None,
    **settings: Any,
) -> EvalResources:
    """Resources from a directory holding ROME's consistency files and maybe ``world.json``.

    Looks for ``attribute_snippets.json``, ``tfidf_vocab.json`` and ``idf.npy`` in ``directory``
    (the toy world writes them next to its ``counterfact.json``). When they are missing, the
    reason is kept in ``missing`` and logged: consistency and essence similarity are then not
    available, the other benchmarks are.
    """
    resources = EvalResources(**settings)
    if world_file is None and directory is not None and (Path(directory) / "world.json").is_file():
        world_file = Path(directory) / "world.json"
    if world_file is not None:
        resources.world = World.from_json(io.read_json(Path(world_file), "toy world file"))
    if directory is None:
        resources.missing = "no directory with attribute_snippets.json, idf.npy, tfidf_vocab.json"
        return resources
    directory = Path(directory)
    try:
        resources.snippets = metrics.AttributeSnippets.from_file(
            directory / "attribute_snippets.json"
        )
        resources.vectorizer = metrics.TfidfVectorizer.from_files(
            directory / "tfidf_vocab.json", directory / "idf.npy"
        )
    except FileNotFoundError as error:
        resources.snippets = resources.vectorizer = None
        resources.missing = str(error)
        logger.warning("consistency and essence similarity are not available: %s", error)
    return resources


# ---------------------------------------------------------------------------------------------
# Methods: the editor and the baselines.


class Method:
    """The unedited model; subclasses change the prompt's text or edit its hidden states."""

    name = "unedited"
    label = "Unedited"

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
        """Edit the model for one tokenized batch of (rewritten) prompts while inside."""
        return contextlib.nullcontext()


class PrefixMethod(Method):
    """Prepend ``"{entity} {attribute}."`` to every prompt, including other entities' prompts.

    Generated texts show the prompt without the prefix, so that the prefix's own words do not
    count towards consistency or fluency.
    """

    name = "prefix"
    label = "Prefix"

    @staticmethod
    def prefix(case: EvalCase) -> str:
        return f"{case.entity} {case.attribute}".rstrip(". ") + ". "

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
    world: World | None = None,
    snippets: metrics.AttributeSnippets | None = None,
    seed: int = 0,
) -> dict[int, str]:
    """For each case, another entity known to have its new attribute (seeded choice).

    Candidates come from the toy world (entities whose relation has ``target_new``), else from
    ROME's attribute snippets (entities with that relation and target id), else from the case's
    attribute prompts read with the relation's templates. Cases without a candidate are left out
    (and counted in the log).
    """
    rng = random.Random(seed)
    templates = _relation_templates(cases)
    replacements: dict[int, str] = {}
    for case in cases:
        candidates: list[str] = []
        if world is not None:
            candidates = [
                entity.name for entity in world.entities_with(case.relation_id, case.target_new)
            ]
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
        templates.setdefault(case.relation_id, set()).add(case.prompt.replace(case.entity, "{}", 1))
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


def unedited(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    return Method()


def prefix(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    return PrefixMethod()


def replace(
    mt: models.ModelAndTokenizer, cases: Sequence[EvalCase], resources: EvalResources
) -> Method:
    return ReplaceMethod(
        find_replacements(cases, resources.world, resources.snippets, seed=resources.seed)
    )


BASELINES: dict[
    str, Callable[[models.ModelAndTokenizer, Sequence[EvalCase], EvalResources], Method]
] = {
    "prefix": prefix,
    "replace": replace,
    "unedited": unedited,
}
"""Baselines by name: each builds its :class:`Method` for the cases."""


def applicable_cases(method: Method, cases: Sequence[EvalCase]) -> list[EvalCase]:
    """The cases a method can be evaluated on (replace needs a replacement entity)."""
    if isinstance(method, ReplaceMethod):
        return [case for case in cases if case.case_id in method.replacements]
    return list(cases)


# ---------------------------------------------------------------------------------------------
# Batched LM computations with a method attached.

T = TypeVar("T")


def _batches(items: Sequence[T], batch_size: int, desc: str) -> Iterator[Sequence[T]]:
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 2, leave=False):
        yield items[start : start + batch_size]


@torch.no_grad()
def target_log_probs(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str, str]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str = "score targets",
) -> np.ndarray:
    """log p(target | prompt) of the whole target, for ``(case, prompt, target)`` queries.

    Each prompt is rewritten by the method and followed by ``" " + target``; the target's tokens
    are scored under teacher forcing (the sum of their log-probabilities) in one forward pass
    per batch, with the method's edit attached.
    """
    device = models.determine_device(mt.model)
    results: list[torch.Tensor] = []
    for batch in _batches(queries, batch_size, desc):
        cases = [case for case, _, _ in batch]
        prompts = [method.rewrite(case, prompt) for case, prompt, _ in batch]
        texts = [
            f"{prompt} {target}" for prompt, (_, _, target) in zip(prompts, batch, strict=True)
        ]
        inputs, offsets = precompute.tokenize(mt.tokenizer, texts, device, padding_side="right")
        prompt_chars = torch.tensor([len(prompt) for prompt in prompts])
        is_target = (
            (offsets[..., 0] >= prompt_chars[:, None])
            & (offsets[..., 1] > offsets[..., 0])
            & inputs.attention_mask.cpu().bool()
        )
        if not bool(is_target.any(dim=-1).all()):
            bad = int((~is_target.any(dim=-1)).nonzero()[0])
            raise ValueError(f"target of query {texts[bad]!r} has no token after its prompt")
        with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
            logits = mt.model(**inputs).logits
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, inputs.input_ids[:, 1:, None]).squeeze(-1)
        results.append((token_log_probs * is_target[:, 1:].to(device)).sum(dim=-1).cpu())
    return torch.cat(results).double().numpy() if results else np.zeros(0)


@torch.no_grad()
def next_token_predictions(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    desc: str = "predict next tokens",
) -> np.ndarray:
    """Top-1 next token id after each ``(case, prompt)``, with the method attached."""
    device = models.determine_device(mt.model)
    results: list[torch.Tensor] = []
    for batch in _batches(queries, batch_size, desc):
        cases = [case for case, _ in batch]
        prompts = [method.rewrite(case, prompt) for case, prompt in batch]
        inputs, offsets = precompute.tokenize(mt.tokenizer, prompts, device, padding_side="right")
        with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
            logits = mt.model(**inputs).logits
        rows = torch.arange(len(prompts), device=device)
        last = precompute.last_token_positions(inputs.attention_mask)
        results.append(logits[rows, last].argmax(dim=-1).cpu())
    return torch.cat(results).numpy() if results else np.zeros(0, dtype=np.int64)


def _max_positions(model: transformers.PreTrainedModel) -> int | None:
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _batch_seed(seed: int, stream: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([seed, stream, batch_index]).generate_state(1)[0])


def clean_generated_text(text: str) -> str:
    """ROME's post-processing of generated text: NFKD, paragraph breaks to spaces."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


@torch.no_grad()
def generate_texts(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str]],
    max_length: int = GENERATION_MAX_LENGTH,
    top_k: int = GENERATION_TOP_K,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stream: int = 0,
    desc: str = "generate",
) -> list[str]:
    """Sample a continuation of each ``(case, prompt)`` with the method attached.

    Each text is the prompt as :meth:`Method.visible` shows it followed by the sampled tokens,
    ``max_length`` tokens in all (the visible prompt's tokens included, as in ROME). Top-k
    sampling, batched with left padding, seeded per batch from ``(seed, stream, batch index)``
    without touching the global random state; ``top_k=1`` is greedy. Queries are batched in
    order of prompt length (less padding) and returned in the order given.
    """
    device = models.determine_device(mt.model)
    tokenizer = mt.tokenizer
    limit = _max_positions(mt.model)
    rewritten = [method.rewrite(case, prompt) for case, prompt in queries]
    lengths = [len(ids) for ids in tokenizer(rewritten)["input_ids"]] if queries else []
    order = sorted(range(len(queries)), key=lambda index: lengths[index])
    texts: list[str] = []
    sorted_queries = [queries[index] for index in order]
    for batch_index, batch in enumerate(_batches(sorted_queries, batch_size, desc)):
        cases = [case for case, _ in batch]
        prompts = [method.rewrite(case, prompt) for case, prompt in batch]
        visible = [method.visible(case, prompt) for case, prompt in batch]
        inputs, offsets = precompute.tokenize(tokenizer, prompts, device, padding_side="left")
        visible_lengths = [len(ids) for ids in tokenizer(visible)["input_ids"]]
        new_tokens = [max(1, max_length - length) for length in visible_lengths]
        width = inputs.input_ids.shape[1]
        max_new_tokens = max(new_tokens)
        if limit is not None and width + max_new_tokens > limit:
            # Every row's positions must stay below the model's limit.
            max_new_tokens = max(1, limit - width)
            cut = sum(wanted > max_new_tokens for wanted in new_tokens)
            if cut:
                logger.warning(
                    "%d of %d texts cut to %d new tokens: the model has only %d positions",
                    cut,
                    len(new_tokens),
                    max_new_tokens,
                    limit,
                )
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
            )
            torch.manual_seed(_batch_seed(seed, stream, batch_index))
            stack.enter_context(method.edit(mt, cases, prompts, offsets, inputs.attention_mask))
            generate: Any = mt.model.generate
            outputs = generate(
                **inputs,
                do_sample=top_k > 1,
                top_k=top_k if top_k > 1 else None,
                top_p=1.0,
                temperature=1.0,
                num_beams=1,
                use_cache=True,
                max_new_tokens=max_new_tokens,
                eos_token_id=None,  # ROME samples through end-of-text; it is removed below
                pad_token_id=tokenizer.pad_token_id,
            )
        for row, (shown, wanted) in enumerate(zip(visible, new_tokens, strict=True)):
            sampled = outputs[row, width : width + wanted]
            continuation = str(tokenizer.decode(sampled, skip_special_tokens=True))
            texts.append(clean_generated_text(shown + continuation))
    unsorted = [""] * len(queries)
    for position, index in enumerate(order):
        unsorted[index] = texts[position]
    return unsorted


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass
class ResultSettings(DataClassJsonMixin):
    """What a result was computed from; a rerun reuses a result only if these match."""

    method: str
    method_details: dict[str, str]
    model: str
    case_ids: list[int]
    seed: int
    max_length: int = GENERATION_MAX_LENGTH
    top_k: int = GENERATION_TOP_K


@dataclass
class CaseProbabilities(DataClassJsonMixin):
    """Probabilities of both targets for each prompt of one case."""

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


@dataclass
class GenerationCase(DataClassJsonMixin):
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


BenchmarkResult = (
    ProbabilityResults | RelationSpecificityResults | GenerationResults | EssenceResults
)


def result_settings(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> ResultSettings:
    return ResultSettings(
        method=method.name,
        method_details=method.details(),
        model=mt.name,
        case_ids=[case.case_id for case in cases],
        seed=resources.seed,
        max_length=resources.max_length,
        top_k=resources.top_k,
    )


# ---------------------------------------------------------------------------------------------
# Benchmarks.


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
    log_probs = target_log_probs(mt, method, queries, resources.batch_size, desc=benchmark)
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
    """p(target_new) > p(target_true) on each case's rewrite prompt."""
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


def relation_specificity(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> RelationSpecificityResults:
    """Top-1 predictions on the entity's other relations, with the method vs. without it.

    Uses the toy world's training templates of every other relation of the case's entity. A
    relation that an implication ties to the edited one (nationality -> language) should change
    to the implied value; it is scored apart, on cases where the implied value differs from the
    entity's current one.
    """
    settings = result_settings(mt, method, cases, resources)
    cases = applicable_cases(method, cases)
    world = resources.world
    if world is None:
        return RelationSpecificityResults(
            benchmark="relation_specificity",
            settings=settings,
            available=False,
            reason="needs the toy world's world.json (real CounterFact has no prompts for "
            "the entity's other relations)",
        )
    entities = {entity.name: entity for entity in world.entities}
    implications = {(i.if_relation, i.then_relation): i.mapping for i in world.implications}
    plans = []
    for case in cases:
        entity = entities.get(case.entity)
        if entity is None:
            continue
        queries, relations, implied_queries = [], [], []
        implied_value = None
        for relation in world.relations:
            if relation.relation_id == case.relation_id or relation.relation_id not in entity.facts:
                continue
            prompts = [template.format(case.entity) for template in relation.train_templates]
            mapping = implications.get((case.relation_id, relation.relation_id))
            if mapping is not None:
                value = mapping.get(case.target_new)
                if value is not None and value != entity.facts[relation.relation_id]:
                    implied_value = value
                    implied_queries += prompts
                continue
            queries += prompts
            relations += [relation.relation_id] * len(prompts)
        plans.append((case, queries, relations, implied_queries, implied_value))

    all_queries = [(case, prompt) for case, q, _, iq, _ in plans for prompt in (*q, *iq)]
    edited = next_token_predictions(mt, method, all_queries, resources.batch_size, "relations")
    original = next_token_predictions(mt, Method(), all_queries, resources.batch_size, "relations")
    results, start = [], 0
    for case, queries, relations, implied_queries, implied_value in plans:
        count = len(queries)
        unchanged = (edited[start : start + count] == original[start : start + count]).tolist()
        start += count
        hits: list[bool] = []
        if implied_queries:
            implied_id = int(precompute.target_token_ids(mt.tokenizer, [implied_value or ""])[0])
            hits = (edited[start : start + len(implied_queries)] == implied_id).tolist()
            start += len(implied_queries)
        results.append(
            RelationSpecificityCase(
                case_id=case.case_id,
                prompts=list(queries),
                relations=relations,
                unchanged=[bool(flag) for flag in unchanged],
                implied_prompts=list(implied_queries),
                implied_value=implied_value,
                implied_hits=[bool(hit) for hit in hits],
            )
        )
    unchanged_metric = metrics.Metric.aggregate(
        [metrics.share(c.unchanged) for c in results if c.unchanged]
    )
    implied_metric = metrics.Metric.aggregate(
        [metrics.share(c.implied_hits) for c in results if c.implied_hits]
    )
    return RelationSpecificityResults(
        benchmark="relation_specificity",
        settings=settings,
        available=True,
        unchanged=unchanged_metric,
        implied_changed=implied_metric,
        cases=results,
    )


def _tfidf_missing(resources: EvalResources) -> str | None:
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
        batch_size=resources.batch_size,
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
    missing = _tfidf_missing(resources)
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
        batch_size=resources.batch_size,
        stream=_REFERENCE_STREAM,
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
        batch_size=resources.batch_size,
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
        similarity_missing=None if similarities else _tfidf_missing(resources),
        fluency=metrics.Metric.aggregate([c.fluency for c in per_case]),
        cases=per_case,
    )


Benchmark = Callable[
    [models.ModelAndTokenizer, Method, Sequence[EvalCase], EvalResources], BenchmarkResult
]

BENCHMARKS: dict[str, Benchmark] = {
    "efficacy": efficacy,
    "paraphrase": paraphrase,
    "neighborhood": neighborhood,
    "relation_specificity": relation_specificity,
    "generation": generation,
    "essence": essence,
}
"""Benchmarks by name, in the order the evaluation runs them."""

RESULT_TYPES: dict[str, type[DataClassJsonMixin]] = {
    "efficacy": ProbabilityResults,
    "paraphrase": ProbabilityResults,
    "neighborhood": ProbabilityResults,
    "relation_specificity": RelationSpecificityResults,
    "generation": GenerationResults,
    "essence": EssenceResults,
}
"""The result dataclass each benchmark writes (to read result files back)."""


# ---------------------------------------------------------------------------------------------
# Running benchmarks into result files.

ESSENCE_REFERENCES_FILE = "essence_references.json"


@dataclass
class EssenceReferences(DataClassJsonMixin):
    """Unedited essence texts shared by every method of an evaluation (one file)."""

    model: str
    seed: int
    max_length: int
    top_k: int
    texts: dict[str, str]
    """Case id (as a string, for JSON) -> text."""


def result_file(experiment_dir: Path, method: str, benchmark: str) -> Path:
    """``<experiment_dir>/<method>/<benchmark>.json``."""
    return Path(experiment_dir) / method / f"{benchmark}.json"


def read_result(path: Path, benchmark: str) -> BenchmarkResult | None:
    """The result stored at ``path``, or None if there is none or it cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        result = RESULT_TYPES[benchmark].from_dict(io.read_json(path, f"{benchmark} result"))
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable result %s (%s); it will be recomputed", path, error)
        return None
    return cast(BenchmarkResult, result)


def _load_essence_references(
    experiment_dir: Path, mt: models.ModelAndTokenizer, resources: EvalResources
) -> dict[int, str]:
    path = Path(experiment_dir) / ESSENCE_REFERENCES_FILE
    if path.is_file():
        try:
            stored = EssenceReferences.from_dict(io.read_json(path, "essence references"))
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable %s (%s)", path, error)
        else:
            if (stored.model, stored.seed, stored.max_length, stored.top_k) == (
                mt.name,
                resources.seed,
                resources.max_length,
                resources.top_k,
            ):
                return {int(case_id): text for case_id, text in stored.texts.items()}
    return {}


def _save_essence_references(
    experiment_dir: Path, mt: models.ModelAndTokenizer, resources: EvalResources
) -> None:
    references = resources.essence_references or {}
    stored = EssenceReferences(
        model=mt.name,
        seed=resources.seed,
        max_length=resources.max_length,
        top_k=resources.top_k,
        texts={str(case_id): text for case_id, text in sorted(references.items())},
    )
    io.write_json(Path(experiment_dir) / ESSENCE_REFERENCES_FILE, stored.to_dict())


def run_benchmarks(
    mt: models.ModelAndTokenizer,
    methods: Sequence[Method],
    cases: Sequence[EvalCase],
    resources: EvalResources,
    experiment_dir: Path,
    names: Sequence[str] | None = None,
    rerun: bool = False,
) -> dict[str, dict[str, BenchmarkResult]]:
    """Run each benchmark for each method, one result file each, skipping finished ones.

    A result file is written atomically once its benchmark is done, so an interrupted run
    leaves only complete files. A file whose settings (method and its configuration, model,
    cases, seed, generation settings) match is reused unless ``rerun``; one computed with other
    settings is an error, so that one experiment directory never mixes configurations.
    Returns ``{method: {benchmark: result}}``.
    """
    names = list(names or BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
    experiment_dir = Path(experiment_dir)
    if "essence" in names and resources.essence_references is None:
        resources.essence_references = _load_essence_references(experiment_dir, mt, resources)
    results: dict[str, dict[str, BenchmarkResult]] = {}
    for method in methods:
        results[method.name] = {}
        for name in names:
            path = result_file(experiment_dir, method.name, name)
            expected = result_settings(mt, method, cases, resources)
            existing = read_result(path, name) if not rerun else None
            if existing is not None and existing.settings == expected:
                logger.info("%s: found complete result at %s; skipping", name, path)
                results[method.name][name] = existing
                continue
            if existing is not None:
                raise ValueError(
                    f"{path} holds a {name} result computed with other settings "
                    f"({_settings_difference(existing.settings, expected)}); pass --rerun to "
                    "replace it, or evaluate under another experiment name (-n)"
                )
            logger.info("running %s for %s on %d cases", name, method.name, len(cases))
            known_references = len(resources.essence_references or {})
            result = BENCHMARKS[name](mt, method, cases, resources)
            io.write_json(path, result.to_dict())
            if name == "essence" and len(resources.essence_references or {}) > known_references:
                _save_essence_references(experiment_dir, mt, resources)
            results[method.name][name] = result
    return results


def _settings_difference(old: ResultSettings, new: ResultSettings) -> str:
    changed = [key for key, value in new.to_dict().items() if old.to_dict().get(key) != value]
    return "differs in " + ", ".join(changed)


def collect_results(
    mt: models.ModelAndTokenizer,
    methods: Sequence[Method],
    cases: Sequence[EvalCase],
    resources: EvalResources,
    experiment_dir: Path,
) -> dict[str, dict[str, BenchmarkResult]]:
    """Every stored result of these methods computed with the current settings.

    Used for the summary, so it shows benchmarks finished by earlier invocations too (e.g. after
    ``-b efficacy --rerun``), and never a result computed with other settings.
    """
    collected: dict[str, dict[str, BenchmarkResult]] = {}
    for method in methods:
        expected = result_settings(mt, method, cases, resources)
        collected[method.name] = {}
        for name in BENCHMARKS:
            result = read_result(result_file(experiment_dir, method.name, name), name)
            if result is not None and result.settings == expected:
                collected[method.name][name] = result
    return collected
