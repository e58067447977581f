"""Running the problems: every problem at every layer for the cases the model knows, written case by
case and read back on resuming; a registered method with its hyperparameters moved to a layer and,
under the reference protocol, its per-problem overrides applied
(:data:`~remedi.evaluation.locate.protocols.PROBLEM_HPARAMS`, ``experiments/evaluate.py:57-136``).

The protocol a run used is saved as ``protocol.json`` beside its results; resuming under another
protocol (or other noise, window or overrides) is refused unless ``rerun`` recomputes everything.
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
from remedi.evaluation.locate import protocols, target_trace
from remedi.evaluation.locate.problems import (
    DEFAULT_TRACE_KIND,
    DEFAULT_TRACE_WINDOW,
    PROBLEMS,
    ProblemResult,
    edit_case,
)
from remedi.evaluation.locate.setups import ProblemSetup, knows, setup_case
from remedi.evaluation.methods import Method, build_method
from remedi.methods import registry

logger = logging.getLogger(__name__)


def edited_layers_of(hparams: dict[str, Any]) -> list[int]:
    return [hparams["layer"]] if "layer" in hparams else list(hparams["layers"])


def packaged_window(name: str, mt: models.ModelAndTokenizer) -> int:
    """How many layers method ``name`` edits with its packaged hyperparameters (or its
    registered :attr:`~remedi.methods.registry.MethodSpec.edit_window`)."""
    spec = registry.method_spec(name)
    if spec.edit_window:
        return spec.edit_window
    return len(edited_layers_of(registry.load_hparams(name, mt.name).to_dict()))


def method_at_layer(
    name: str,
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    layer: int,
    window: int | None = None,
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Method, list[int]]:
    """Registered method ``name`` with its packaged hyperparameters moved to ``layer``
    (:func:`remedi.methods.registry.moved_to_layer`; with ``window``, a method editing several
    layers edits that many around it) and ``overrides`` applied, and the layers it edits.

    Raises:
        errors.UsageError: An override names a hyperparameter the method does not have.
    """
    spec = registry.method_spec(name)
    if spec.hparams is None:
        raise errors.UsageError(f"method {name!r} has no hyperparameters to move to a layer")
    packaged = registry.load_hparams(name, mt.name).to_dict()
    moved = registry.moved_to_layer(name, packaged, layer, mt.num_layers)
    if window is not None and "layers" in moved:
        moved["layers"] = tracing.layer_window(layer, window, mt.num_layers)
    unknown = sorted(set(overrides or {}) - set(moved))
    if unknown:
        raise errors.UsageError(
            f"the per-problem overrides {unknown} are not {name} hyperparameters "
            f"(it has {sorted(moved)}); fix remedi.evaluation.locate.protocols.PROBLEM_HPARAMS"
        )
    moved.update(overrides or {})
    hparams = spec.hparams.from_dict(moved)
    method = build_method(name, mt, cases, resources, hparams=hparams, **options)
    return method, edited_layers_of(moved)


def check_protocol(directory: Path, protocol: protocols.Protocol, rerun: bool) -> None:
    """Refuse to resume ``directory`` under a protocol other than the one it was run with (saved
    as ``protocol.json``); save ``protocol`` there for a new run or a ``rerun``."""
    path = directory / "protocol.json"
    if path.is_file() and not rerun:
        saved = protocols.Protocol.from_dict(io.read_json(path, "editing problems protocol"))
        differences = saved.differences(protocol)
        if differences:
            raise errors.UsageError(
                f"{directory} was run under protocol {saved.name!r}, which differs from this "
                f"run's ({protocol.name!r}) in {', '.join(differences)}; resume it with the same "
                "settings, give another --name, or recompute it with --rerun"
            )
        return
    if not path.is_file() and not rerun and any(directory.glob("*/L*/*.json")):
        raise errors.UsageError(
            f"{directory} holds results without a protocol.json (written before protocols were "
            "recorded, under 'ours'); give another --name or recompute it with --rerun"
        )
    io.write_json(path, protocol.to_dict())


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
    protocol: protocols.Protocol | str = protocols.DEFAULT_PROTOCOL,
) -> list[ProblemResult]:
    """Every problem at every layer for the cases the model knows, under ``protocol`` (a
    :class:`~remedi.evaluation.locate.protocols.Protocol` or its name, then built at
    ``settings.noise_scale``).

    Writes ``directory/protocol.json``, ``directory/setups/<case>.json`` and
    ``directory/<problem>/L<layer>/<case>.json``; finished files are read back, not recomputed
    (unless ``rerun``).
    """
    unknown = [problem for problem in problems if problem not in PROBLEMS]
    if unknown:
        raise errors.UsageError(f"unknown editing problems {unknown}; choose from {list(PROBLEMS)}")
    for layer in layers:
        tracing.layer_window(layer, 1, mt.num_layers)
    if isinstance(protocol, str):
        protocol = protocols.build(
            protocol, protocols.model_id(mt.name), method_name, settings.noise_scale
        )
    settings = dataclasses.replace(settings, kinds=[trace_kind], windows=[trace_window])
    directory = Path(directory)
    check_protocol(directory, protocol, rerun)
    setups: dict[int, ProblemSetup] = {}
    for case in tqdm(cases, desc="setting up cases"):
        path = directory / "setups" / f"{case.case_id}.json"
        saved = None
        if path.is_file() and not rerun:
            saved = ProblemSetup.from_dict(io.read_json(path, "problem setup"))
            current = saved.settings is not None and saved.settings.matches(settings)
            if saved.protocol != protocol.name or not current:
                saved = None
        try:
            setup = saved or setup_case(mt, case, settings, protocol=protocol.name)
            changed = setup is not saved
            if protocol.whole_target and knows(setup, protocol.min_true_prob):
                previous = setup.target_trace
                if previous is not None and not previous.matches(
                    trace_kind, trace_window, settings
                ):
                    previous = None
                traced_layers = set(previous.restored) if previous else set()
                setup.target_trace = target_trace.trace_target(
                    mt,
                    setup.prompt,
                    setup.subject,
                    setup.target_true,
                    settings,
                    trace_kind,
                    trace_window,
                    layers,
                    previous=previous,
                )
                changed = changed or set(setup.target_trace.restored) != traced_layers
        except errors.SampleError as error:  # e.g. the noised prediction is blank text
            logger.warning("skips case %d: %s", case.case_id, error)
            continue
        setups[case.case_id] = setup
        if changed:
            io.write_json(path, setup.to_dict(), indent=None)
    correct = [
        case
        for case in cases
        if case.case_id in setups and knows(setups[case.case_id], protocol.min_true_prob)
    ]
    logger.info(
        "%d of %d cases known under protocol %r (p(o_true) > %s%s); editing those",
        len(correct),
        len(cases),
        protocol.name,
        protocol.min_true_prob,
        f", o_true in a greedy generation of {protocol.generation_tokens} tokens"
        if protocol.generation_tokens
        else ", o_true's first token the top prediction",
    )

    results = []
    for layer in layers:
        for problem in problems:
            out = directory / problem / f"L{layer}"
            todo = [c for c in correct if rerun or not (out / f"{c.case_id}.json").is_file()]
            for case in correct:
                if case not in todo:
                    saved_result = io.read_json(out / f"{case.case_id}.json", "problem result")
                    results.append(ProblemResult.from_dict(saved_result))
            if not todo:
                continue
            overrides = protocol.problem_hparams.get(problem, {})
            # A new method per problem: methods cache their edit by case id.
            method, edited = method_at_layer(
                method_name,
                mt,
                todo,
                resources,
                layer,
                window=protocol.edit_window,
                overrides=overrides,
                **(method_options or {}),
            )
            window = protocol.edit_window or packaged_window(method_name, mt)
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
                        window=window,
                        protocol=protocol.name,
                        hparams=overrides,
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
