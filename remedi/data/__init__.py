"""What a sample is, and how each dataset becomes samples.

A *context mediation sample* (REMEDI's unit of training and evaluation) says: in ``prompt``,
``entity`` should behave as if ``context`` (a sentence stating ``attribute`` about it) were true,
so the LM should now continue the prompt with ``target_mediated`` instead of
``target_unmediated``. Each dataset has one loader in :data:`DATASET_LOADERS` that returns these
samples as a ``datasets.Dataset`` (one column per field of :class:`ContextMediationSample`);
:func:`load_dataset` looks it up by name.

The package: :mod:`remedi.data.samples` (the sample schema and the helpers every loader
shares), :mod:`remedi.data.text` (sentence splitting without downloads),
:mod:`remedi.data.splits` (the rows the REMEDI reference evaluates), and one module per
dataset family (:mod:`remedi.data.counterfact`). Adding a dataset is one module with its loader
and one entry in :data:`DATASET_LOADERS`. Everything is importable from ``remedi.data``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from remedi import errors
from remedi.data.biosbias import (
    BIOSBIAS_MAX_RECORDS,
    BIOSBIAS_PROMPT_TEMPLATE,
    RestrictedUnpickler,
    UnsafePickleError,
    biosbias_record_limit,
    load_biosbias,
    load_biosbias_bios,
    read_biosbias_records,
)
from remedi.data.counterfact import (
    COUNTERFACT_FEATURES,
    COUNTERFACT_FILE_NAME,
    COUNTERFACT_PARAPHRASE_ARTIFACTS,
    COUNTERFACT_PROMPT_SOURCES,
    COUNTERFACT_RECORD_LOADERS,
    COUNTERFACT_SHA256,
    COUNTERFACT_SIZE,
    COUNTERFACT_URL,
    EASYEDIT_REQUIRED_FIELDS,
    DownloadError,
    clean_counterfact_paraphrase,
    counterfact_cache_file,
    counterfact_prompt,
    counterfact_record_sample,
    counterfact_sample,
    counterfact_samples,
    download_file,
    ensure_counterfact_file,
    load_counterfact,
    load_counterfact_easyedit,
    load_counterfact_easyedit_records,
    load_counterfact_records,
)
from remedi.data.relations import (
    DEFAULT_MAX_RELATION_PROMPTS,
    RelationFact,
    RelationTemplates,
)
from remedi.data.samples import (
    SAMPLE_FEATURES,
    ContextMediationSample,
    DatasetFormatError,
    attribute_from_context,
    log_dropped,
    raise_bad_record,
    read_json_list,
    samples_dataset,
)
from remedi.data.splits import (
    REFERENCE_ROWS,
    REFERENCE_SMALL_ROWS,
    counterfact_case_id,
    describe_reference_split,
    reference_rows,
    reference_split_ids,
)
from remedi.data.text import rejoin_sentences_on_entity, split_sentences

__all__ = [
    "BIOSBIAS_MAX_RECORDS",
    "BIOSBIAS_PROMPT_TEMPLATE",
    "COUNTERFACT_DATASETS",
    "COUNTERFACT_FEATURES",
    "COUNTERFACT_FILE_NAME",
    "COUNTERFACT_PARAPHRASE_ARTIFACTS",
    "COUNTERFACT_PROMPT_SOURCES",
    "COUNTERFACT_RECORD_LOADERS",
    "COUNTERFACT_SHA256",
    "COUNTERFACT_SIZE",
    "COUNTERFACT_URL",
    "DATASET_LOADERS",
    "DEFAULT_MAX_RELATION_PROMPTS",
    "EASYEDIT_REQUIRED_FIELDS",
    "REFERENCE_ROWS",
    "REFERENCE_SMALL_ROWS",
    "SAMPLE_FEATURES",
    "ContextMediationSample",
    "DatasetFormatError",
    "DownloadError",
    "RelationFact",
    "RelationTemplates",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "attribute_from_context",
    "biosbias_record_limit",
    "clean_counterfact_paraphrase",
    "counterfact_cache_file",
    "counterfact_case_id",
    "counterfact_prompt",
    "counterfact_record_sample",
    "counterfact_sample",
    "counterfact_samples",
    "describe_reference_split",
    "download_file",
    "ensure_counterfact_file",
    "entity_disjoint_split",
    "load_biosbias",
    "load_biosbias_bios",
    "load_counterfact",
    "load_counterfact_easyedit",
    "load_counterfact_easyedit_records",
    "load_counterfact_records",
    "load_dataset",
    "log_dropped",
    "raise_bad_record",
    "read_biosbias_records",
    "read_json_list",
    "reference_rows",
    "reference_split_ids",
    "rejoin_sentences_on_entity",
    "samples_dataset",
    "select_ids",
    "split_sentences",
]

DATASET_LOADERS: dict[str, Callable[..., datasets.Dataset]] = {
    "counterfact": load_counterfact,
    "counterfact_easyedit": load_counterfact_easyedit,
    "biosbias": load_biosbias,
}

# The probing datasets (REMEDI's entailment test and WinoVenti), one module each.
from remedi.data.mcrae import load_mcrae  # noqa: E402
from remedi.data.winoventi import load_winoventi  # noqa: E402

DATASET_LOADERS["mcrae"] = load_mcrae
DATASET_LOADERS["winoventi"] = load_winoventi

COUNTERFACT_DATASETS = ("counterfact", "counterfact_easyedit")
"""The datasets whose loaders take ``prompt_source`` (see ``COUNTERFACT_PROMPT_SOURCES``)."""


def load_dataset(name: str, file: Path | None = None, **kwargs: Any) -> datasets.Dataset:
    """Load dataset ``name`` (a key of ``DATASET_LOADERS``) as context mediation samples.

    ``kwargs`` go to the dataset's loader, e.g. ``prompt_source="rewrite"`` for CounterFact.
    """
    if name not in DATASET_LOADERS:
        raise errors.UsageError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASET_LOADERS))}"
        )
    return DATASET_LOADERS[name](file=file, **kwargs)


def entity_disjoint_split(
    dataset: datasets.Dataset, test_size: float, seed: int, entity_column: str = "entity"
) -> datasets.DatasetDict:
    """Split into "train" and "test" so that no entity has samples on both sides.

    Entities are shuffled with ``seed`` and moved to "test" until it holds at least
    ``test_size`` of the samples (at least one entity, and never all of them when there are
    two or more). Row order within each side follows the input.
    """
    if not 0.0 < test_size < 1.0:
        raise errors.UsageError(f"test_size must be a fraction in (0, 1), got {test_size}")
    entities = np.asarray(dataset[entity_column], dtype=object)
    unique, inverse, counts = np.unique(entities, return_inverse=True, return_counts=True)
    if len(unique) < 2:
        raise errors.UsageError(
            f"cannot split {len(dataset)} samples by entity: they mention fewer than 2 entities; "
            "use a dataset (or --max-samples) with samples about more entities"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    covered = np.cumsum(counts[order])
    wanted = math.ceil(test_size * len(dataset))
    n_test_entities = int(np.searchsorted(covered, wanted) + 1)
    n_test_entities = min(max(n_test_entities, 1), len(unique) - 1)
    is_test_entity = np.zeros(len(unique), dtype=bool)
    is_test_entity[order[:n_test_entities]] = True
    is_test = is_test_entity[inverse]
    return datasets.DatasetDict(
        {
            "train": dataset.select(np.flatnonzero(~is_test)),
            "test": dataset.select(np.flatnonzero(is_test)),
        }
    )


def select_ids(dataset: datasets.Dataset, ids: Sequence[str]) -> datasets.Dataset:
    """Rows of ``dataset`` with the given sample ids, in the order of ``ids``.

    Raises if an id is missing (e.g. the dataset file changed since a run saved its split).
    """
    position = {sample_id: index for index, sample_id in enumerate(dataset["id"])}
    missing = [sample_id for sample_id in ids if sample_id not in position]
    if missing:
        raise errors.UnknownIdError(
            f"{len(missing)} sample ids are not in the dataset (first: {missing[0]!r}); was the "
            f"run trained on a different dataset file?"
        )
    return dataset.select([position[sample_id] for sample_id in ids])


# The harms paper's edit data and general-ability task sets (text items, not samples).
from remedi.data.general_tasks import TASK_FILES, load_task  # noqa: E402
from remedi.data.general_tasks import TASK_LOADERS as GENERAL_TASK_LOADERS  # noqa: E402
from remedi.data.zsre import ZsreEdit, load_zsre  # noqa: E402

__all__ += ["GENERAL_TASK_LOADERS", "TASK_FILES", "ZsreEdit", "load_task", "load_zsre"]

# The canonical-examples tasks (Hewitt et al.) are prefix/suffix text, not context mediation
# samples: their own registry of loaders, one per task.
from remedi.data.canonical import CANONICAL_TASKS  # noqa: E402
from remedi.data.canonical import TASK_LOADERS as CANONICAL_TASK_LOADERS  # noqa: E402

__all__ += ["CANONICAL_TASKS", "CANONICAL_TASK_LOADERS"]
