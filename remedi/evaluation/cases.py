"""What an evaluation is about: CounterFact cases, the resources beside the model, and the
settings every result records.

A case's ``prompt`` is the prompt its context mediation sample asks (by default the record's
first paraphrase prompt, cleaned, as REMEDI's reference does; ``prompt_source="rewrite"`` uses
ROME's rewrite prompt); ``rewrite_prompt`` is always ROME's rewrite prompt, and ``context`` is the
rewrite prompt followed by ``target_new``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
from dataclasses_json import DataClassJsonMixin

from remedi import data, errors, io, metrics, models
from remedi.toy.world import World

logger = logging.getLogger(__name__)

GENERATION_MAX_LENGTH = 100
GENERATION_TOP_K = 5
DEFAULT_BATCH_SIZE = 16
GENERATION_BATCH_FACTOR = 4
"""Generation samples this many times ``batch_size`` texts together by default: a step reads
the LM head's weights once for the whole batch, and its KV cache is small next to them."""

OWN_PROMPT = "own-prompt"
PADDED_BATCH = "padded-batch"
GENERATION_LENGTHS = (OWN_PROMPT, PADDED_BATCH)
"""How a generated text's ``max_length`` is counted (``ResultSettings.generation_length``):

- ``own-prompt``: ``max_length`` tokens in all, the text's own prompt included, sampled through
  the end-of-text token (which is removed from the text): ROME's generation, each text's length
  independent of the others';
- ``padded-batch``: the REMEDI reference's Bias in Bios generation: ``max_length`` counts the
  left-padded batch of :data:`REFERENCE_GENERATION_BATCH` consecutive queries, so each text gets
  ``max_length`` minus the longest prompt of its batch (at least one token), and a text ends at
  its first end-of-text token.
"""
REFERENCE_GENERATION_BATCH = 16
"""The batch the reference's ``max_length`` counts over (its ``editors.DEFAULT_BATCH_SIZE``,
``remedi/editors.py:39``, which its ``scripts/eval_bias_gen.py`` does not change)."""

TARGET_SCORINGS = ("mean", "sum", "first")
"""How a target continuation is scored, named in every result (``ResultSettings.target_scoring``):

- ``mean``: the mean log-probability of the target's tokens (ROME's mean per-token NLL; default,
  so that tables sit next to ROME's published ones);
- ``sum``: the log-probability of the whole target (the product over its tokens);
- ``first``: the log-probability of the target's first token (REMEDI's reference).

The three agree when both targets are one token long (GPT-2's CounterFact targets, the toy world).
"""
DEFAULT_TARGET_SCORING = "mean"

RESULT_FORMAT_VERSION = 3
"""Bumped when the same settings would compute different numbers: 2 = paraphrase prompts by
default, the reference's prefix, per-token target scoring; 3 = each generated text sampled with
its own seed among the top k (same distribution, other draws). Older result files are
recomputed."""


@dataclass(frozen=True)
class EvalCase(DataClassJsonMixin):
    """One CounterFact rewrite with everything the benchmarks ask about it."""

    case_id: int
    entity: str
    relation_id: str
    prompt: str
    """The sample's prompt (the cleaned first paraphrase prompt by default)."""
    context: str
    """The rewrite prompt followed by ``target_new``."""
    attribute: str
    target_new: str
    target_new_id: str
    target_true: str
    target_true_id: str
    rewrite_prompt: str = ""
    """ROME's rewrite prompt with the entity filled in."""
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        """The id of the case's sample in a training run's split (``counterfact/<case_id>``)."""
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
    records: datasets.Dataset | Sequence[Mapping[str, Any]],
    ids: Sequence[str] | None = None,
    prompt_source: str = "paraphrase",
) -> list[EvalCase]:
    """Cases from validated ROME records (:func:`remedi.data.load_counterfact_records`).

    Each case's sample is built by :func:`remedi.data.counterfact_record_sample`, the function
    training uses, so an editor is evaluated on the prompts it was trained to answer.
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
        raise errors.UnknownIdError(
            f"{len(missing)} sample ids have no CounterFact record (first: {missing[0]!r}); "
            "evaluate with the dataset file the editors were trained on (--dataset-file)"
        )
    cases = []
    for sample_id in ids:
        record = by_id[sample_id]
        rewrite = record["requested_rewrite"]
        sample = data.counterfact_record_sample(record, prompt_source=prompt_source)
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
                rewrite_prompt=data.counterfact_prompt(dict(record)),
                paraphrase_prompts=list(record["paraphrase_prompts"]),
                neighborhood_prompts=list(record["neighborhood_prompts"]),
                attribute_prompts=list(record["attribute_prompts"]),
                generation_prompts=list(record["generation_prompts"]),
            )
        )
    return cases


def first_cases(
    records: datasets.Dataset | Sequence[Mapping[str, Any]],
    num_cases: int | None,
    purpose: str,
    prompt_source: str = "rewrite",
) -> list[EvalCase]:
    """The first ``num_cases`` cases of ``records`` (all with None), each asking
    ``prompt_source``: what the tracing and editing-problem scripts run on (``-n``).

    Raises:
        UsageError: There are no cases (an empty dataset, or ``-n 0``); ``purpose`` says for
            what, e.g. ``"to trace"``.
    """
    cases = counterfact_cases(records, prompt_source=prompt_source)
    if num_cases is not None:
        cases = cases[:num_cases]
    if not cases:
        raise errors.UsageError(f"no cases {purpose}: the dataset is empty or -n is 0")
    return cases


DATASET_NOTES: dict[str, tuple[str, ...]] = {
    "counterfact_easyedit": (
        "CounterFact in EasyEdit's reduced format: one paraphrase prompt (rephrase_prompt) and "
        "one neighborhood prompt (locality_prompt) per case; generation samples from the "
        "rewrite prompt, not ROME's generation prompts; no attribute prompts (so no Replace "
        "entities), no attribute snippets or TF-IDF tables (no Consistency, no Essence), no "
        "relation ids.",
    ),
}
"""What a table of cases from each dataset cannot have, said under the table."""


def dataset_notes(dataset: str) -> list[str]:
    """The notes a summary of cases from ``dataset`` carries (:data:`DATASET_NOTES`)."""
    return list(DATASET_NOTES.get(dataset, ()))


@dataclass
class EvalResources:
    """What the benchmarks read besides the model: optional files and evaluation settings."""

    world: World | None = None
    """The toy world (``world.json``): relation specificity and replacements read it."""
    relation_templates: data.RelationTemplates | None = None
    """The dataset's relation templates (relation specificity without a toy world; None: the
    cases' own)."""
    snippets: metrics.AttributeSnippets | None = None
    vectorizer: metrics.TfidfVectorizer | None = None
    missing: str | None = None
    """Why ``snippets``/``vectorizer`` are absent (shown instead of consistency and essence)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Queries per forward pass (scoring, predictions, the editor's directions)."""
    seed: int = 0
    max_length: int = GENERATION_MAX_LENGTH
    top_k: int = GENERATION_TOP_K
    target_scoring: str = DEFAULT_TARGET_SCORING
    """One of :data:`TARGET_SCORINGS`."""
    prompt_source: str = "paraphrase"
    """Which prompt the cases ask (recorded in results; the cases are built with it)."""
    essence_references: dict[int, str] | None = None
    """Unedited essence texts by case id; sampled on first use when None."""
    generation_length: str = OWN_PROMPT
    """How ``max_length`` is counted: one of :data:`GENERATION_LENGTHS`."""
    generation_batch_size: int | None = None
    """Texts sampled together; None: ``GENERATION_BATCH_FACTOR * batch_size``. A text does not
    depend on it (each has its own seed), so it only trades memory (the KV cache) for speed."""

    @property
    def texts_per_batch(self) -> int:
        """How many texts generation samples together (see ``generation_batch_size``)."""
        if self.generation_batch_size is not None:
            return self.generation_batch_size
        return GENERATION_BATCH_FACTOR * self.batch_size

    def __post_init__(self) -> None:
        if self.generation_length not in GENERATION_LENGTHS:
            raise errors.UsageError(
                f"unknown generation length {self.generation_length!r}; choose one of "
                f"{', '.join(GENERATION_LENGTHS)}"
            )
        if self.target_scoring not in TARGET_SCORINGS:
            raise errors.UsageError(
                f"unknown target scoring {self.target_scoring!r}; choose one of "
                f"{', '.join(TARGET_SCORINGS)}"
            )


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


@dataclass
class ResultSettings(DataClassJsonMixin):
    """What a result was computed from; a rerun reuses a result only if these match.

    The defaults of the later fields are what files written before them were computed with, so
    that such a file never passes for a result of today's settings.
    """

    method: str
    method_details: dict[str, str]
    model: str
    case_ids: list[int]
    seed: int
    max_length: int = GENERATION_MAX_LENGTH
    top_k: int = GENERATION_TOP_K
    target_scoring: str = "sum"
    prompt_source: str = "rewrite"
    generation_length: str = OWN_PROMPT
    format_version: int = 1


class DescribedMethod(Protocol):
    """What a result records of its method (see :class:`remedi.evaluation.methods.Method`)."""

    name: str

    def details(self) -> dict[str, str]: ...


def result_settings(
    mt: models.ModelAndTokenizer,
    method: DescribedMethod,
    cases: Sequence[EvalCase],
    resources: EvalResources,
) -> ResultSettings:
    """The settings a result of this method on these cases records."""
    return ResultSettings(
        method=method.name,
        method_details=method.details(),
        model=mt.name,
        case_ids=[case.case_id for case in cases],
        seed=resources.seed,
        max_length=resources.max_length,
        top_k=resources.top_k,
        target_scoring=resources.target_scoring,
        prompt_source=resources.prompt_source,
        generation_length=resources.generation_length,
        format_version=RESULT_FORMAT_VERSION,
    )
