"""Weight editing: methods that compute new values of some of the model's weights.

Each method is a pure function of (model, tokenizer, edit request, hyperparameters) that returns
the NEW values of the parameters it edits (``{name: tensor}``) and never writes into the model;
its ``prepare`` gives a :class:`~remedi.methods.base.WeightEditor` for the registry:

- :mod:`~remedi.methods.rome`: ROME's rank-one update of one layer's MLP output projection;
- :mod:`~remedi.methods.memit`: MEMIT's update of many requests at once over a range of layers;
- :mod:`~remedi.methods.ft`: constrained fine-tuning of MLP output projections (ROME's FT-L);
- :mod:`~remedi.methods.stats`: the key statistics ``E[k k^T]`` ROME and MEMIT read, cached.

The method table is :mod:`~remedi.methods.registry` (every method any suite can run, by name:
these, REMEDI as a method (:mod:`~remedi.methods.remedi`), the text baselines
(:mod:`~remedi.methods.baselines`) and trained methods (:mod:`~remedi.methods.tuning`)).
:func:`~remedi.methods.base.write_weights` writes any method's result into the model (names and
shapes checked) and returns the old values to restore; :func:`~remedi.methods.base.weights_applied`
restores them on leaving a ``with`` block, even when it raises.

Hyperparameters are JSON files per method and model under ``hparams/<method>/<model>.json``
(the papers' values; ``toy.json`` measured on the toy world). Methods never know how they are
judged: nothing here imports :mod:`remedi.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

from remedi import errors, models
from remedi.methods.common import EditRequest

HPARAMS_DIR = Path(__file__).parent / "hparams"


def hparams_file(method: str, model: str) -> Path:
    """The packaged hyperparameter file of ``method`` for model ``model`` (an alias or name).

    Raises:
        errors.UsageError: No file for that model; the message lists those there are.
    """
    name = model.split("+", 1)[0].rstrip("/")
    aliases = {source: alias for alias, source in models.MODEL_ALIASES.items()}
    slug = aliases.get(name, name).split("/")[-1]
    if slug.startswith("toy"):
        slug = "toy"
    path = HPARAMS_DIR / method / f"{slug}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (HPARAMS_DIR / method).glob("*.json"))
        raise errors.UsageError(
            f"no {method} hyperparameters for model {model!r} (have: {', '.join(known)}); "
            f"write a JSON file like {HPARAMS_DIR / method / 'gpt2-xl.json'} and pass it "
            "(method option hparams_file)"
        )
    return path


__all__ = ["HPARAMS_DIR", "EditRequest", "hparams_file"]
