"""Constrained fine-tuning (ROME's FT-L baseline): Adam on MLP output projections.

The MLP output projection at ``layers`` (one layer: FT-L; five adjacent layers: ``ft5``) is
trained with Adam to make the model say the target after the request's prompt: its weight and,
with ``train_bias`` (the default), its bias where it has one (GPT-2's ``Conv1D`` and GPT-J's
``Linear`` do, Llama's ``down_proj`` does not). That is what kmeng01/rome trains: its
``baselines/ft/ft_main.py:71-76`` takes every parameter whose name contains the module path of
``rewrite_module_tmp`` (``mlp.c_proj`` / ``mlp.fc_out``), so weight and bias. After each step
every entry of every trained tensor is clamped to within ``norm_constraint`` of its original
value (an L-infinity ball around each tensor, the same bound for weight and bias, as
``ft_main.py:128-134``; ``None``: unconstrained FT). An optional KL term (``kl_factor``) keeps
the next-token distribution after "{subject} is a" as it was.

One deliberate difference from ROME's reference: every token of a multi-token target is scored
under teacher forcing (the reference scores all target tokens at the prompt's last position).
Training runs on float32 copies of the parameters; the model's own parameters are never written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, io, models
from remedi.methods import common
from remedi.methods.base import MethodSetup, NewWeights, WeightEditor, layers_label

logger = logging.getLogger(__name__)


@dataclass
class FtHparams(DataClassJsonMixin):
    """FT's hyperparameters (names as in kmeng01/rome's ``hparams/FT/*_constr.json``)."""

    layers: list[int]
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    kl_factor: float = 0.0
    norm_constraint: float | None = 5e-4
    kl_prompts: list[str] = field(default_factory=lambda: ["{} is a"])
    early_stop_loss: float = 1e-2
    train_bias: bool = True
    """Also train the projection's bias where it has one, within the same bound (the
    reference's behaviour); False trains the weight alone (what the toy's files were measured
    with)."""

    @classmethod
    def from_file(cls, path: Path) -> FtHparams:
        return cls.from_dict(io.read_json(path, "FT hyperparameters"))


def edit(
    mt: models.ModelAndTokenizer, request: common.EditRequest, hparams: FtHparams
) -> dict[str, torch.Tensor]:
    """New values of the MLP output parameters at ``hparams.layers`` (:func:`trained_names`)
    after fine-tuning on ``request``.

    Raises:
        errors.UsageError: A layer is out of range.
    """
    if not hparams.layers:
        raise errors.UsageError("FT needs at least one layer to train")
    common.check_layers(mt, hparams.layers)
    names = trained_names(mt, hparams)
    originals = {name: mt.model.get_parameter(name).detach() for name in names}
    trained = {
        name: weight.float().clone().requires_grad_(True) for name, weight in originals.items()
    }
    reference = {name: weight.float() for name, weight in originals.items()}

    target_ids = common.target_token_ids(mt.tokenizer, request.prompt, request.target_new)
    kl_texts = [prompt.replace("{}", request.subject) for prompt in hparams.kl_prompts]
    use_kl = hparams.kl_factor > 0
    texts = [request.prompt] + (kl_texts if use_kl else [])
    targets = [target_ids] + [[]] * (len(texts) - 1)
    batch = common.edit_batch(mt.tokenizer, texts, request.subject, targets).to(mt.device)
    kl_rows = torch.arange(1, len(texts), device=mt.device)

    optimizer = torch.optim.Adam(
        list(trained.values()), lr=hparams.lr, weight_decay=hparams.weight_decay
    )
    kl_init: torch.Tensor | None = None
    dtype = mt.dtype
    for step in range(hparams.num_steps):
        optimizer.zero_grad()
        # The model computes in its own dtype; the trained copies stay float32.
        with common.substituted(mt.model, {name: w.to(dtype) for name, w in trained.items()}):
            logits = mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nll = -common.target_log_probs(logits[:1], _first_row(batch)).mean()
        loss = nll
        if use_kl:
            kl_log_probs = torch.log_softmax(
                logits[kl_rows, batch.subject_positions[kl_rows]].float(), dim=-1
            )
            if kl_init is None:
                kl_init = kl_log_probs.detach().clone()
            loss = loss + hparams.kl_factor * torch.nn.functional.kl_div(
                kl_init, kl_log_probs, log_target=True, reduction="batchmean"
            )
        logger.debug("FT step %d: loss %.4f (nll %.4f)", step, loss.item(), nll.item())
        if not torch.isfinite(loss):
            raise errors.RemediError(f"FT loss became {loss.item()} at step {step}; lower lr")
        if loss.item() < hparams.early_stop_loss:
            break
        loss.backward()
        optimizer.step()
        if hparams.norm_constraint is not None:
            # Each trained tensor, bias included, stays in its own L-infinity ball.
            with torch.no_grad():
                for name, weight in trained.items():
                    low = reference[name] - hparams.norm_constraint
                    high = reference[name] + hparams.norm_constraint
                    weight.copy_(torch.maximum(torch.minimum(weight, high), low))
    return {
        name: common.cast_edited_weight(name, originals[name], weight.detach(), "FT").clone()
        for name, weight in trained.items()
    }


def trained_names(mt: models.ModelAndTokenizer, hparams: FtHparams) -> list[str]:
    """The parameters FT trains: each layer's MLP output weight, and its bias where it has one
    and ``hparams.train_bias`` is set."""
    names = []
    for layer in hparams.layers:
        projection = models.determine_mlp_output(mt.model, layer)
        names.append(projection.weight_name)
        if hparams.train_bias and projection.bias_name is not None:
            names.append(projection.bias_name)
    return names


def _first_row(batch: common.EditBatch) -> common.EditBatch:
    return common.EditBatch(
        batch.input_ids[:1],
        batch.attention_mask[:1],
        batch.subject_positions[:1],
        batch.labels[:1],
        batch.target_mask[:1],
    )


class FtEditor(WeightEditor):
    """Constrained fine-tuning prepared for one model (``name``: ``ft`` or ``ft5``). Its updates
    are the trained weights, kept on the CPU."""

    def __init__(self, name: str, hparams: FtHparams):
        self.name = name
        self.hparams = hparams
        constraint = "" if hparams.norm_constraint is None else "-L"
        self.label = layers_label(f"FT{constraint}", hparams.layers)

    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[common.EditRequest]
    ) -> NewWeights:
        self.check_requests(requests)
        new = edit(mt, requests[0], self.hparams)
        return NewWeights({name: value.cpu() for name, value in new.items()})


def prepare(mt: models.ModelAndTokenizer, hparams: FtHparams, setup: MethodSetup) -> FtEditor:
    """Constrained fine-tuning at ``hparams.layers`` for ``mt`` (registered as ``ft`` and, at
    five adjacent layers, ``ft5``; the registry names the prepared method).

    Raises:
        errors.UsageError: A layer is out of range.
    """
    common.check_layers(mt, hparams.layers)
    return FtEditor("ft", hparams)
