"""Weight editing: methods that compute new values of some of the model's weights.

Each method is a pure function of (model, tokenizer, edit request, hyperparameters) that returns
the NEW values of the parameters it edits (``{name: tensor}``) and never writes into the model;
its ``prepare`` gives a :class:`~remedi.methods.base.WeightEditor` for the registry:

- :mod:`~remedi.methods.rome`: ROME's rank-one update of one layer's MLP output projection;
- :mod:`~remedi.methods.memit`: MEMIT's update of many requests at once over a range of layers;
- :mod:`~remedi.methods.ft`: constrained fine-tuning of MLP output projections (ROME's FT-L);
- :mod:`~remedi.methods.kn`: Knowledge Neurons (integrated gradients over MLP neurons, then
  their output rows moved from the old answer's embedding to the new one's);
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


def hparams_settings(method: str) -> list[str]:
    """The named settings packaged for ``method`` besides its default files: each a folder
    ``hparams/<method>/<setting>/`` of files per model (e.g. ``rome/gu2024``: ROME as Gu et
    al. 2024 ran it)."""
    folder = HPARAMS_DIR / method
    return (
        sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    )


def hparams_file(method: str, model: str, setting: str | None = None) -> Path:
    """The packaged hyperparameter file of ``method`` for model ``model`` (an alias or name):
    ``hparams/<method>/<model>.json``, or ``hparams/<method>/<setting>/<model>.json`` for a
    named setting.

    Raises:
        errors.UsageError: No such setting, or no file for that model; the message lists those
            there are.
    """
    name = model.split("+", 1)[0].rstrip("/")
    aliases = {source: alias for alias, source in models.MODEL_ALIASES.items()}
    slug = aliases.get(name, name).split("/")[-1]
    if slug.startswith("toy"):
        slug = "toy"
    folder = HPARAMS_DIR / method
    if setting is not None:
        if setting not in hparams_settings(method):
            known = ", ".join(hparams_settings(method)) or "none"
            raise errors.UsageError(
                f"no hyperparameter setting {setting!r} for {method} (settings: {known}); "
                "leave it out for the method's default file"
            )
        folder = folder / setting
    path = folder / f"{slug}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.json")))
        raise errors.UsageError(
            f"no {method} hyperparameters for model {model!r} in {folder} (have: {known}); "
            f"write a JSON file like {HPARAMS_DIR / method / 'gpt2-xl.json'} and pass it "
            "(method option hparams_file)"
        )
    return path


__all__ = ["HPARAMS_DIR", "EditRequest", "hparams_file", "hparams_settings"]
