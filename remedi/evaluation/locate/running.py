"""Running the problems: every problem at every layer for the cases the model knows, written case by
case and read back on resuming; a registered method with its hyperparameters moved to a layer.

Not taken over: the reference's per-problem hyperparameter overrides for GPT-J
(``experiments/evaluate.py``, ``get_override_hparams``: FT norm constraints per problem, ROME's
``v_lr`` 0.05 and 25 steps for forcing); the packaged hyperparameters of each model are used.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from remedi import errors, io, models, tracing
from remedi.evaluation.cases import EvalCase, EvalResources
from remedi.evaluation.locate.problems import (
    DEFAULT_TRACE_KIND,
    DEFAULT_TRACE_WINDOW,
    PROBLEMS,
    ProblemResult,
    edit_case,
)
from remedi.evaluation.locate.setups import MIN_TRUE_PROB, ProblemSetup, knows, setup_case
from remedi.evaluation.methods import Method, build_method
from remedi.methods import registry

logger = logging.getLogger(__name__)


def edited_layers_of(hparams: dict[str, Any]) -> list[int]:
    return [hparams["layer"]] if "layer" in hparams else list(hparams["layers"])


def method_at_layer(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    layer: int,
    **options: Any,
) -> tuple[Method, list[int]]:
    """Registered method ``name`` with its packaged hyperparameters moved to ``layer``
    (:func:`remedi.methods.registry.moved_to_layer`), and the layers it edits."""
    spec = registry.method_spec(name)
    if spec.hparams is None:
        raise errors.UsageError(f"method {name!r} has no hyperparameters to move to a layer")
    packaged = registry.load_hparams(name, mt.name).to_dict()
    moved = registry.moved_to_layer(name, packaged, layer, mt.num_layers)
    hparams = spec.hparams.from_dict(moved)
    method = build_method(name, mt, cases, resources, hparams=hparams, **options)
    return method, edited_layers_of(moved)


def run_problems(
    mt: models.ModelAndTokenizer,
    method_name: str,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    settings: tracing.TraceSettings,
    directory: Path,
    layers: Sequence[int],
    problems: Sequence[str] = PROBLEMS,
    trace_kind: str = DEFAULT_TRACE_KIND,
    trace_window: int = DEFAULT_TRACE_WINDOW,
    method_options: dict[str, Any] | None = None,
    rerun: bool = False,
) -> list[ProblemResult]:
    """Every problem at every layer for the cases the model answers correctly.

    Writes ``directory/setups/<case>.json`` and ``directory/<problem>/L<layer>/<case>.json``;
    finished files are read back, not recomputed (unless ``rerun``).
    """
    unknown = [problem for problem in problems if problem not in PROBLEMS]
    if unknown:
        raise errors.UsageError(f"unknown editing problems {unknown}; choose from {list(PROBLEMS)}")
    for layer in layers:
        tracing.layer_window(layer, 1, mt.num_layers)
    settings = dataclasses.replace(settings, kinds=[trace_kind], windows=[trace_window])
    directory = Path(directory)
    setups: dict[int, ProblemSetup] = {}
    for case in tqdm(cases, desc="tracing cases"):
        path = directory / "setups" / f"{case.case_id}.json"
        if path.is_file() and not rerun:
            saved = ProblemSetup.from_dict(io.read_json(path, "problem setup"))
            if saved.trace.settings.matches(settings):
                setups[case.case_id] = saved
                continue
        try:
            setups[case.case_id] = setup_case(mt, case, settings)
        except errors.SampleError as error:  # e.g. the noised prediction is blank text
            logger.warning("skips case %d: %s", case.case_id, error)
            continue
        io.write_json(path, setups[case.case_id].to_dict(), indent=None)
    correct = [case for case in cases if case.case_id in setups and knows(setups[case.case_id])]
    logger.info(
        "%d of %d cases answered correctly with p(o_true) > %s; editing those",
        len(correct),
        len(cases),
        MIN_TRUE_PROB,
    )

    results = []
    for layer in layers:
        for problem in problems:
            out = directory / problem / f"L{layer}"
            todo = [c for c in correct if rerun or not (out / f"{c.case_id}.json").is_file()]
            for case in correct:
                if case not in todo:
                    saved = io.read_json(out / f"{case.case_id}.json", "problem result")
                    results.append(ProblemResult.from_dict(saved))
            if not todo:
                continue
            # A new method per problem: methods cache their edit by case id.
            method, edited = method_at_layer(
                method_name,
                mt,
                todo,
                resources,
                layer,
                **(method_options or {}),
            )
            for case in tqdm(todo, desc=f"{problem} L{layer}"):
                try:
                    result = edit_case(
                        mt,
                        method,
                        problem,
                        case,
                        setups[case.case_id],
                        settings,
                        layer,
                        edited,
                        trace_kind,
                        trace_window,
                    )
                except errors.SampleError as error:  # e.g. a target erasure cannot isolate
                    logger.warning("%s skips case %d: %s", problem, case.case_id, error)
                    continue
                io.write_json(out / f"{case.case_id}.json", result.to_dict(), indent=None)
                results.append(result)
    return results


def read_results(directory: Path) -> list[ProblemResult]:
    """Every problem result saved under ``directory`` (see :func:`run_problems`)."""
    paths = sorted(Path(directory).glob("*/L*/*.json"))
    return [ProblemResult.from_dict(io.read_json(path, "problem result")) for path in paths]
