"""Running benchmarks into result files: one JSON per (method, benchmark), resumable.

The benchmarks are a registry (:data:`BENCHMARKS`), each a function
``(mt, method, cases, resources) -> result dataclass``; :data:`RESULT_TYPES` says which dataclass
each writes, so that result files read back with their schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from dataclasses_json import DataClassJsonMixin

from remedi import errors, io, models
from remedi.evaluation.cases import EvalCase, EvalResources, ResultSettings, result_settings
from remedi.evaluation.editing import counterfact, generation
from remedi.evaluation.methods import Method

logger = logging.getLogger(__name__)

BenchmarkResult = (
    counterfact.ProbabilityResults
    | counterfact.RelationSpecificityResults
    | generation.GenerationResults
    | generation.EssenceResults
)

Benchmark = Callable[
    [models.ModelAndTokenizer, Method, Sequence[EvalCase], EvalResources], BenchmarkResult
]

BENCHMARKS: dict[str, Benchmark] = {
    "efficacy": counterfact.efficacy,
    "paraphrase": counterfact.paraphrase,
    "neighborhood": counterfact.neighborhood,
    "relation_specificity": counterfact.relation_specificity,
    "generation": generation.generation,
    "essence": generation.essence,
}
"""Benchmarks by name, in the order the evaluation runs them."""

RESULT_TYPES: dict[str, type[DataClassJsonMixin]] = {
    "efficacy": counterfact.ProbabilityResults,
    "paraphrase": counterfact.ProbabilityResults,
    "neighborhood": counterfact.ProbabilityResults,
    "relation_specificity": counterfact.RelationSpecificityResults,
    "generation": generation.GenerationResults,
    "essence": generation.EssenceResults,
}
"""The result dataclass each benchmark writes (to read result files back)."""

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
    cases, seed, generation and scoring settings) match is reused unless ``rerun``; one computed
    with other settings is an error, so that one experiment directory never mixes
    configurations. Returns ``{method: {benchmark: result}}``.
    """
    names = list(names or BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise errors.UsageError(f"unknown benchmarks {unknown}; known: {', '.join(BENCHMARKS)}")
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
            if (
                isinstance(existing, counterfact.RelationSpecificityResults)
                and not existing.available
            ):
                # Written when relation specificity needed a toy world: it no longer does.
                existing = None
            if existing is not None and existing.settings == expected:
                logger.info("%s: found complete result at %s; skipping", name, path)
                results[method.name][name] = existing
                continue
            if existing is not None:
                raise errors.MismatchError(
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
