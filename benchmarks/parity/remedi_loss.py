"""REMEDI's loss terms: our ``training.editing_loss`` against evandez/REMEDI's
``editors.editing_loss`` on the same model, samples and editor weights.

The reference's package is also named ``remedi``, so it runs in its own interpreter
(``--remedi-python``, a venv with transformers 4.46, spaCy and baukit, as
``shared/bench/sbs/setup.sh`` builds) through :mod:`benchmarks.parity.remedi_reference_side`; the
model and tokenizer travel as a saved folder, the samples as JSON (our CounterFact rows), the
editor as a state dict. Each term is compared alone (the reference's loss with one weight set).

The reference's KL term keeps the batch's last sample only (its ``editors.py:389-399`` assigns
each sample's KL instead of adding it, then divides by the batch size); ours averages every
sample's. The switch that reproduces it here: our term on the last sample alone, divided by the
batch size.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import torch

from benchmarks.parity.setup import Comparison, model_label, relative_difference
from remedi import data, editors, models, precompute, training

LOSS_TOLERANCE = 1e-4
"""Both sides run the same float32 forward passes, under two transformers versions (4.46 and 5)."""

NUM_SAMPLES = 8


def compare_remedi_loss(
    mt: models.ModelAndTokenizer,
    remedi_dir: Path,
    baukit_dir: Path,
    remedi_python: Path,
    layer: int,
    cases_file: Path,
) -> list[Comparison]:
    """The mediated, unmediated and (last-sample) KL terms on one batch of ``NUM_SAMPLES``
    CounterFact samples, a random linear editor at ``layer``; and, as a row that differs by
    design, our KL term (every sample's) against the reference's."""
    dataset = data.load_dataset("counterfact_easyedit", file=cases_file)
    samples = [dict(dataset[index]) for index in range(NUM_SAMPLES)]
    inputs = precompute.editor_inputs(mt, samples, [layer])
    torch.manual_seed(0)
    editor = editors.new_editor("linear", mt, layer)
    with training.frozen(mt.model), torch.no_grad():
        weights = training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=1.0)
        _, ours = training.editing_loss(mt, editor, inputs, weights)
        _, last = training.editing_loss(mt, editor, inputs.select([NUM_SAMPLES - 1]), weights)
    ours_mean_kl = ours["kl"]
    ours["kl"] = last["kl"] / NUM_SAMPLES
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        mt.model.save_pretrained(workdir / "model")
        mt.tokenizer.save_pretrained(workdir / "model")
        rows = [
            {
                key: sample[key]
                for key in (
                    "id",
                    "entity",
                    "prompt",
                    "context",
                    "attribute",
                    "target_mediated",
                    "target_unmediated",
                )
            }
            for sample in samples
        ]
        (workdir / "rows.json").write_text(json.dumps(rows))
        torch.save(editor.state_dict(), workdir / "editor.pt")
        project = Path(__file__).resolve().parents[2]
        subprocess.run(
            [
                str(remedi_python),
                str(Path(__file__).with_name("remedi_reference_side.py")),
                "--remedi-dir",
                str(remedi_dir),
                "--baukit-dir",
                str(baukit_dir),
                "--project-dir",
                str(project),
                "--model-dir",
                str(workdir / "model"),
                "--rows",
                str(workdir / "rows.json"),
                "--editor-state",
                str(workdir / "editor.pt"),
                "--output",
                str(workdir / "terms.json"),
                "--layer",
                str(layer),
            ],
            check=True,
        )
        theirs = json.loads((workdir / "terms.json").read_text())
    differences = [
        relative_difference(torch.tensor(ours[name]), torch.tensor(theirs[name]))
        for name in ("mediated", "unmediated", "kl")
    ]
    label = (
        f"{model_label(mt)}; {NUM_SAMPLES} CounterFact samples in one batch; a random linear "
        f"editor at layer {layer}; the reference in its own venv (transformers 4.46)"
    )
    patches = ["baukit/__init__.py: its four image-helper imports (torchvision) left out"]
    kl_difference = relative_difference(torch.tensor(ours_mean_kl), torch.tensor(theirs["kl"]))
    return [
        Comparison(
            name="REMEDI loss terms",
            reference="remedi/editors.py:editing_loss (evandez/REMEDI)",
            inputs=label,
            quantity="mediated, unmediated and KL terms (ours on the last sample / batch size)",
            tolerance=LOSS_TOLERANCE,
            max_relative_difference=max(differences),
            differences=differences,
            patches=patches,
        ),
        Comparison(
            name="REMEDI KL term as we define it",
            reference="remedi/editors.py:editing_loss (evandez/REMEDI)",
            inputs=label,
            quantity="our KL term (mean over every sample) against the reference's",
            tolerance=LOSS_TOLERANCE,
            max_relative_difference=kl_difference,
            differences=[kl_difference],
            patches=patches,
            by_design="the reference's KL loop assigns each sample's KL instead of adding it "
            "(editors.py:389-399): the last sample's alone, divided by the batch size",
        ),
    ]
