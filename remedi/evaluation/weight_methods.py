"""Weight-editing methods as registered :class:`~remedi.evaluation.methods.Method`\\ s.

``rome`` (:mod:`remedi.methods.rome`), ``memit`` (:mod:`remedi.methods.memit`, one request per
case), ``ft`` (FT-L at one layer) and ``ft5`` (five adjacent layers) (:mod:`remedi.methods.ft`). Each case is written as one edit request: ROME's rewrite
prompt, the case's entity as subject, ``target_new``. The suites apply it for that case's
queries only, and :class:`~remedi.evaluation.methods.WeightEditMethod` restores every weight
bit-identically afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from remedi import corpora, env, models
from remedi.evaluation.cases import EvalCase, EvalResources
from remedi.evaluation.methods import Method, WeightEditMethod, register_method
from remedi.methods import common, ft, hparams_file, memit, rome, stats

logger = logging.getLogger(__name__)

WEIGHT_METHODS = ("rome", "memit", "ft", "ft5")
"""The registered methods that edit weights (they take the statistics options below)."""


def edit_request(case: EvalCase) -> common.EditRequest:
    """The edit request of a CounterFact case: its rewrite prompt, entity and new target."""
    return common.EditRequest(
        prompt=case.rewrite_prompt or case.prompt,
        subject=case.entity,
        target_new=case.target_new,
        target_true=case.target_true,
    )


def default_stats_dir() -> Path:
    """Where key statistics are cached: ``<results>/stats``."""
    return env.results_dir() / "stats"


class RomeMethod(WeightEditMethod):
    """ROME: a rank-one update of the MLP output projection at one layer, per case."""

    name = "rome"

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        hparams: rome.RomeHparams,
        second_moment: stats.SecondMoment | None,
        templates: list[str] | None = None,
    ):
        self.hparams = hparams
        self.second_moment = second_moment
        self.label = f"ROME (L{hparams.layer})"
        self.templates = templates or common.context_templates(
            mt, hparams.context_template_lengths, hparams.seed
        )
        # The rank-one factors per case (small), so that each benchmark reapplies the same edit.
        self.updates: dict[int, rome.RankOneUpdate] = {}

    def details(self) -> dict[str, str]:
        details = {"hparams": self.hparams.to_json(sort_keys=True)}
        if self.second_moment is not None:
            for key in ("dataset", "tokens", "weight_sha256"):
                details[f"stats_{key}"] = self.second_moment.metadata.get(key, "")
        return details

    def new_weights(self, mt: models.ModelAndTokenizer, case: EvalCase) -> dict[str, torch.Tensor]:
        update = self.updates.get(case.case_id)
        if update is None:
            moment = self.second_moment.moment if self.second_moment is not None else None
            update = rome.compute_update(
                mt, edit_request(case), self.hparams, moment, self.templates
            )
            self.updates[case.case_id] = update
        return {update.weight_name: update.new_weight(mt.model.get_parameter(update.weight_name))}


class MemitMethod(WeightEditMethod):
    """MEMIT with one request per case: its update spread over the MLPs of a range of layers."""

    name = "memit"

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        hparams: memit.MemitHparams,
        second_moments: dict[int, torch.Tensor],
        templates: list[str] | None = None,
    ):
        self.hparams = hparams
        self.second_moments = second_moments
        layers = sorted(hparams.layers)
        where = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}"
        self.label = f"MEMIT ({where})"
        self.templates = templates or common.context_templates(
            mt, hparams.context_template_lengths, hparams.seed
        )
        # Each case's factors (rank one per layer), so that each benchmark reapplies the edit.
        self.updates: dict[int, memit.MemitUpdate] = {}

    def details(self) -> dict[str, str]:
        return {"hparams": self.hparams.to_json(sort_keys=True)}

    def new_weights(self, mt: models.ModelAndTokenizer, case: EvalCase) -> dict[str, torch.Tensor]:
        update = self.updates.get(case.case_id)
        if update is None:
            update = memit.compute_update(
                mt, [edit_request(case)], self.hparams, self.second_moments, self.templates
            )
            self.updates[case.case_id] = update
        return update.new_weights(mt.model)


class FtMethod(WeightEditMethod):
    """Constrained fine-tuning of MLP output projections at one or more layers, per case.

    Each case's trained weights are kept on the CPU (up to ``max_cached_bytes`` in all), so that
    the benchmarks after the first reapply them instead of training again.
    """

    def __init__(self, name: str, hparams: ft.FtHparams, max_cached_bytes: int = 2**30):
        self.name = name
        self.hparams = hparams
        self.max_cached_bytes = max_cached_bytes
        self.cached: dict[int, dict[str, torch.Tensor]] = {}
        self.cached_bytes = 0
        layers = hparams.layers
        where = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}"
        constraint = "" if hparams.norm_constraint is None else "-L"
        self.label = f"FT{constraint} ({where})"

    def details(self) -> dict[str, str]:
        return {"hparams": self.hparams.to_json(sort_keys=True)}

    def new_weights(self, mt: models.ModelAndTokenizer, case: EvalCase) -> dict[str, torch.Tensor]:
        cached = self.cached.get(case.case_id)
        if cached is not None:
            return {name: value.to(mt.device) for name, value in cached.items()}
        new = ft.edit(mt, edit_request(case), self.hparams)
        size = sum(value.numel() * value.element_size() for value in new.values())
        if self.cached_bytes + size <= self.max_cached_bytes:
            self.cached[case.case_id] = {name: value.cpu() for name, value in new.items()}
            self.cached_bytes += size
        return new


@register_method("rome")
def rome_method(
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    hparams: rome.RomeHparams | None = None,
    hparams_path: Path | None = None,
    stats_dataset: str | None = None,
    stats_num_texts: int | None = None,
    stats_dir: Path | None = None,
) -> Method:
    """ROME with the model's packaged hyperparameters (or ``hparams``/``hparams_path``), its
    key statistics loaded from ``stats_dir`` or computed over ``stats_dataset``."""
    if hparams is None:
        hparams = rome.RomeHparams.from_file(hparams_path or hparams_file("rome", mt.name))
    common.check_layers(mt, [hparams.layer])
    moment = None
    if hparams.mom2_adjustment:
        moment = stats.second_moment(
            mt,
            hparams.layer,
            corpora.open_corpus(stats_dataset or hparams.stats_dataset, mt.name),
            stats_num_texts or hparams.stats_num_texts,
            cache_dir=stats_dir or default_stats_dir(),
        )
    return RomeMethod(mt, hparams, moment)


@register_method("memit")
def memit_method(
    mt: models.ModelAndTokenizer,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    hparams: memit.MemitHparams | None = None,
    hparams_path: Path | None = None,
    stats_dataset: str | None = None,
    stats_num_texts: int | None = None,
    stats_dir: Path | None = None,
) -> Method:
    """MEMIT with the model's packaged hyperparameters (or ``hparams``/``hparams_path``), the key
    statistics of each of its layers loaded from ``stats_dir`` or computed over ``stats_dataset``."""
    if hparams is None:
        hparams = memit.MemitHparams.from_file(hparams_path or hparams_file("memit", mt.name))
    common.check_layers(mt, hparams.layers)
    moments = memit.load_second_moments(
        mt,
        hparams,
        stats_dir or default_stats_dir(),
        corpora.open_corpus(stats_dataset, mt.name) if stats_dataset else None,
        num_texts=stats_num_texts,
    )
    return MemitMethod(mt, hparams, moments)


def _ft_factory(name: str) -> None:
    @register_method(name)
    def factory(
        mt: models.ModelAndTokenizer,
        cases: Sequence[EvalCase],
        resources: EvalResources,
        hparams: ft.FtHparams | None = None,
        hparams_path: Path | None = None,
        **ignored: object,
    ) -> Method:
        if hparams is None:
            hparams = ft.FtHparams.from_file(hparams_path or hparams_file(name, mt.name))
        common.check_layers(mt, hparams.layers)
        return FtMethod(name, hparams)

    factory.__doc__ = f"{name}: constrained fine-tuning with the model's packaged hyperparameters."


_ft_factory("ft")
_ft_factory("ft5")
