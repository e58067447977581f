"""The reference side of the REMEDI loss comparison, run in its own interpreter (a venv with
transformers 4.46, spaCy and baukit, as ``shared/bench/sbs/setup.sh`` builds), because the
reference's package is also named ``remedi``: evandez/REMEDI's ``editors.editing_loss`` with one
term switched on at a time, on its own precomputed batch, for an editor whose weights ours wrote.

Run by :mod:`benchmarks.parity.remedi_loss`; it writes ``{"mediated", "unmediated", "kl"}`` as
JSON. baukit's image helpers (which need torchvision) are left out of its ``__init__`` at import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

BAUKIT_IMAGE_IMPORTS = (
    "from .parallelfolder import ImageFolderSet",
    "from . import renormalize",
    "from .imgsave import save_image_set",
    "from . import show",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in (
        "--remedi-dir",
        "--baukit-dir",
        "--project-dir",
        "--model-dir",
        "--rows",
        "--editor-state",
        "--output",
    ):
        parser.add_argument(flag, type=Path, required=True)
    parser.add_argument("--layer", type=int, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(args.remedi_dir.resolve()))
    sys.path.append(str(args.project_dir.resolve()))  # after the reference: its remedi wins
    from benchmarks.parity import reference

    patches = {
        "baukit": [
            reference.Patch(line, "pass  # " + line, 1, "image helper needs torchvision")
            for line in BAUKIT_IMAGE_IMPORTS
        ]
    }
    with reference.reference_modules(
        args.baukit_dir, ["baukit"], patches, required=["baukit/nethook.py"]
    ):
        terms = _loss_terms(args)
    args.output.write_text(json.dumps(terms))


def _loss_terms(args: Any) -> dict[str, float]:
    import datasets
    import torch
    import transformers

    # The reference's remedi (first on sys.path), typed Any.
    editors: Any = importlib.import_module("remedi.editors")
    models: Any = importlib.import_module("remedi.models")
    precompute: Any = importlib.import_module("remedi.precompute")

    torch.set_grad_enabled(True)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    mt = models.ModelAndTokenizer(model, tokenizer)
    rows = json.loads(args.rows.read_text())
    dataset = datasets.Dataset.from_list(rows)
    inputs = precompute.editor_inputs_from_batch(
        mt, dataset[:], layers=[args.layer], device="cpu", fp32=True
    )
    batch = {key: value for key, value in inputs.items()}
    batch.update({key: dataset[:][key] for key in dataset.column_names})
    for key, value in batch.items():
        if isinstance(value, list) and value and not isinstance(value[0], str):
            batch[key] = torch.tensor(value)
    editor = editors.LinearEditor(mt=mt, layer=args.layer)
    editor.load_state_dict(torch.load(args.editor_state))
    terms = {}
    off = {"lam_m": None, "lam_u": None, "lam_kl": None}
    for name, flag in (("mediated", "lam_m"), ("unmediated", "lam_u"), ("kl", "lam_kl")):
        weights = {**off, flag: 1.0}
        loss = editors.editing_loss(editor=editor, batch=batch, device="cpu", **weights)
        terms[name] = float(loss.detach())
    return terms


if __name__ == "__main__":
    main()
