"""What a method is, whatever it edits, and the one checked way to write weights into a model.

A weight-editing method is prepared once for a model (:class:`WeightEditor`: its hyperparameters,
key statistics, random prefixes) and then computes an update for some edit requests
(:meth:`WeightEditor.compute`); the update gives the new values of the parameters it changes
(:meth:`WeightUpdate.new_weights`) and never writes into the model. Writing goes through
:func:`write_weights` (for good, e.g. sequential editing) or :func:`weights_applied` (for the
body of a ``with`` block, restored exactly on exit even when the body raises); both check every
name and shape before anything is written.

A hidden-state method (:class:`DirectionEditor`) gives one direction per edit, added at the edited
entity's mention at one layer; each suite finds the mentions in its own token layout.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from remedi import corpora, env, errors, models, precompute
from remedi.methods.common import EditRequest


@dataclass
class MethodSetup:
    """What preparing a method may read besides the model and its hyperparameters.

    The ``stats_*`` options override where the key statistics of ROME/MEMIT come from (None:
    the hyperparameters' ``stats_dataset`` and ``stats_num_texts``, cached in ``<results>/stats``);
    ``corpus`` is a statistics corpus given in memory instead of the one ``stats_dataset`` (or
    the hyperparameters') names for the model (:func:`remedi.corpora.open_corpus`);
    ``editor`` is a REMEDI editor given in memory instead of one loaded from a run.
    """

    stats_dir: Path | None = None
    stats_dataset: str | None = None
    stats_num_texts: int | None = None
    corpus: corpora.Corpus | None = None
    editor: Any = None
    batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE
    """Rows per forward pass where preparing reads hidden states (REMEDI's directions)."""

    def statistics_corpus(self, mt: models.ModelAndTokenizer, default: str) -> corpora.Corpus:
        """The corpus the key statistics read: ``corpus``, else the one ``stats_dataset`` (else
        ``default``, the hyperparameters' ``stats_dataset``) names for ``mt``."""
        if self.corpus is not None:
            return self.corpus
        return corpora.open_corpus(self.stats_dataset or default, mt.name)

    def statistics_dir(self) -> Path:
        """Where key statistics are cached: ``stats_dir``, else ``<results>/stats``."""
        return self.stats_dir if self.stats_dir is not None else env.results_dir() / "stats"


# ---------------------------------------------------------------------------------------------
# Writing weights.


def check_new_weights(
    model: torch.nn.Module, new_weights: Mapping[str, torch.Tensor], method: str = "the edit"
) -> dict[str, torch.nn.Parameter]:
    """The parameters ``new_weights`` replace, by name, after checking that each name is a
    parameter of ``model``, each shape matches and no value is the parameter's own tensor.

    Raises:
        errors.UsageError: A name the model does not have, a shape that differs, or an alias
            of the unedited tensor (return a new tensor, e.g. ``weight + delta``).
    """
    parameters = dict(model.named_parameters())
    unknown = sorted(set(new_weights) - set(parameters))
    if unknown:
        raise errors.UsageError(
            f"{method} edits parameters the model does not have: {unknown}; use names from "
            "model.named_parameters()"
        )
    for name, value in new_weights.items():
        parameter = parameters[name]
        if value.shape != parameter.shape:
            raise errors.UsageError(
                f"{method}'s new value of {name} has shape {tuple(value.shape)}, the parameter "
                f"{tuple(parameter.shape)}"
            )
        if value.data_ptr() == parameter.data_ptr():
            raise errors.UsageError(
                f"{method} returned the unedited tensor of {name} as its edit; return a new "
                "tensor (e.g. weight + delta)"
            )
    return {name: parameters[name] for name in new_weights}


def write_weights(
    model: torch.nn.Module,
    new_weights: Mapping[str, torch.Tensor],
    method: str = "the edit",
    keep_old: bool = True,
) -> dict[str, torch.Tensor]:
    """Write ``new_weights`` (by parameter name) into ``model`` in place and return copies of
    the values they replace (none when ``keep_old`` is False: the caller keeps its own);
    nothing is written unless every check of :func:`check_new_weights` passes.

    For sequential editing: ``saved = write_weights(model, update)`` keeps the edit;
    ``write_weights(model, saved)`` undoes it bit-identically (undo a sequence by writing the
    saved dicts in reverse order, or the first saved value of each name).
    """
    parameters = check_new_weights(model, new_weights, method)
    saved = {}
    if keep_old:
        saved = {name: parameter.detach().clone() for name, parameter in parameters.items()}
    with torch.no_grad():
        for name, value in new_weights.items():
            parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))
    return saved


@contextlib.contextmanager
def weights_applied(
    model: torch.nn.Module, new_weights: Mapping[str, torch.Tensor], method: str = "the edit"
) -> Iterator[None]:
    """Run the body with ``new_weights`` written into ``model``; on exit, also when the body
    raises, every written parameter is restored bit-identically."""
    saved = write_weights(model, new_weights, method)
    try:
        yield
    finally:
        write_weights(model, saved, "restoring the unedited weights", keep_old=False)


# ---------------------------------------------------------------------------------------------
# Weight-editing methods.


class WeightUpdate(Protocol):
    """An edit computed by a weight-editing method (small factors or whole new values)."""

    def new_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """New values of the parameters the edit changes, by name, on the model's devices."""
        ...

    def nbytes(self) -> int:
        """Bytes this update keeps (a cache of updates bounds its size with it)."""
        ...


@dataclass
class NewWeights:
    """An update that is simply the new values (kept where they were given, e.g. the CPU)."""

    values: dict[str, torch.Tensor]

    def new_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The values, each on its parameter's device."""
        return {
            name: value.to(model.get_parameter(name).device) for name, value in self.values.items()
        }

    def nbytes(self) -> int:
        return sum(value.numel() * value.element_size() for value in self.values.values())


class WeightEditor(abc.ABC):
    """A weight-editing method prepared for one model: it computes updates for edit requests.

    ``batches``: :meth:`compute` takes many requests at once (MEMIT); a method that does not is
    given one request at a time.
    """

    name: str = "weights"
    label: str = "Weights"
    batches: bool = False
    hparams: Any = None

    @abc.abstractmethod
    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[EditRequest]
    ) -> WeightUpdate:
        """The update that writes ``requests`` into the model as it is now."""

    def details(self) -> dict[str, str]:
        """What identifies this configuration (saved with every result): its hyperparameters
        as sorted JSON, when they have a JSON form."""
        if hasattr(self.hparams, "to_json"):
            return {"hparams": self.hparams.to_json(sort_keys=True)}
        return {}

    def new_weights(
        self, mt: models.ModelAndTokenizer, requests: Sequence[EditRequest]
    ) -> dict[str, torch.Tensor]:
        """New parameter values for ``requests`` (:meth:`compute`, then its new weights)."""
        return self.compute(mt, requests).new_weights(mt.model)

    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        """Raise a clear :class:`errors.UsageError` for no request, or several to a method that
        edits one fact at a time."""
        if not requests:
            raise errors.UsageError(f"{self.name} needs at least one edit request")
        if len(requests) > 1 and not self.batches:
            raise errors.UsageError(
                f"{self.name} edits one fact at a time, got {len(requests)} requests; give them "
                "one by one, or use a method that batches (e.g. memit)"
            )


EditFunction = Callable[[models.ModelAndTokenizer, Sequence[EditRequest]], Mapping[str, Any]]
"""``edit(mt, requests) -> {parameter name: new value}``."""


class FunctionEditor(WeightEditor):
    """A weight-editing method given as a function from requests to new weights (tests, quick
    experiments)."""

    def __init__(self, name: str, edit: EditFunction, batches: bool = False, label: str = ""):
        self.name, self.edit, self.batches = name, edit, batches
        self.label = label or name

    def compute(self, mt: models.ModelAndTokenizer, requests: Sequence[EditRequest]) -> NewWeights:
        self.check_requests(requests)
        return NewWeights(dict(self.edit(mt, requests)))


def layers_label(method: str, layers: Sequence[int]) -> str:
    """``"ROME (L3)"`` or ``"MEMIT (L3-8)"``: a method's name and the layers it edits."""
    ordered = sorted(layers)
    where = f"L{ordered[0]}" if len(ordered) == 1 else f"L{ordered[0]}-{ordered[-1]}"
    return f"{method} ({where})"


# ---------------------------------------------------------------------------------------------
# Hidden-state methods.


class DirectionEditor(Protocol):
    """A hidden-state method: a direction per edit, added (times ``alpha``) to the output of
    decoder block ``layer`` at the edited entity's mention (its last token if ``last_token``)."""

    layer: int
    alpha: float
    last_token: bool
    label: str

    def directions(
        self, mt: models.ModelAndTokenizer, samples: Sequence[Mapping[str, str]]
    ) -> torch.Tensor:
        """One direction per sample (a context mediation sample: entity, context, ...)."""
        ...

    def details(self) -> dict[str, str]:
        """What identifies this configuration (saved with every result)."""
        ...
