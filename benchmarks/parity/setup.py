"""What every parity comparison shares: the tiny random GPT-2 with the real GPT-2 tokenizer, the
edit requests, a key second moment ``C``, and the row of the parity table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from dataclasses_json import DataClassJsonMixin

from benchmarks import common as bench_common
from remedi import models
from remedi.methods import common

MODEL_LAYERS = 4
MODEL_WIDTH = 128
MODEL_HEADS = 4
MODEL_SEED = 0


@dataclass(frozen=True)
class Request:
    """A CounterFact-style request: ``prompt`` holds ``"{}"`` where the subject goes."""

    prompt: str
    subject: str
    target: str

    def ours(self) -> common.EditRequest:
        return common.EditRequest(self.prompt.format(self.subject), self.subject, self.target)

    def reference(self, case_id: int) -> dict[str, Any]:
        """The request as kmeng01/rome's and kmeng01/memit's ``apply_*`` functions take it."""
        return {
            "case_id": case_id,
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": {"str": self.target},
            "target_true": {"str": "unknown"},
        }


REQUESTS = (
    Request("{} is located in the city of", "The Eiffel Tower", "Rome"),
    Request("The mother tongue of {} is", "Danielle Darrieux", "English"),
    Request("{}, who plays the", "Toko Yasuda", "French horn"),
)
"""Three requests; the last target has two tokens (" French", " horn")."""


def tiny_gpt2(num_layers: int = MODEL_LAYERS, width: int = MODEL_WIDTH) -> models.ModelAndTokenizer:
    """A randomly initialised GPT-2 (``num_layers`` x ``width``, seed 0) with the real GPT-2
    tokenizer from the shared data (a fast tokenizer whose pad token is its EOS), float32, eval."""
    tokenizer = bench_common.gpt2_tokenizer()
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=width,
        n_layer=num_layers,
        n_head=MODEL_HEADS,
        n_positions=256,
    )
    torch.manual_seed(MODEL_SEED)
    model = transformers.GPT2LMHeadModel(config).eval().requires_grad_(False)
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name="gpt2-tiny-random")


def model_label(mt: models.ModelAndTokenizer) -> str:
    dtype = str(mt.dtype).removeprefix("torch.")
    return f"random GPT-2 {mt.num_layers}x{mt.hidden_size} {dtype}, GPT-2 tokenizer"


def key_second_moment(mt: models.ModelAndTokenizer, layer: int, seed: int = 0) -> torch.Tensor:
    """``C = E[k k^T]`` of ``layer``'s MLP keys over 64 x 64 uniformly random tokens (4,096 keys,
    float32): a real, well-conditioned statistic without a corpus, the same tensor for both sides."""
    projection = models.determine_mlp_output(mt.model, layer)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(mt.tokenizer), (64, 64), generator=generator)
    with torch.no_grad(), common.record_mlp_keys(mt.model, projection) as recorded:
        mt.model(input_ids=input_ids)
    keys = recorded["keys"].input
    assert keys is not None  # the projection ran in the forward pass above
    flat = keys.reshape(-1, keys.shape[-1]).double()
    return (flat.T @ flat / flat.shape[0]).float()


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``|ours - reference| / |reference|`` (Frobenius norms, float64)."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    if ours.shape != reference.shape:
        raise ValueError(
            f"shapes differ: ours {tuple(ours.shape)}, reference {tuple(reference.shape)}"
        )
    return float((ours - reference).norm() / reference.norm())


@dataclass
class Comparison(DataClassJsonMixin):
    """One row of the parity table."""

    name: str
    reference: str
    """The reference's function(s), ``file:function``."""
    inputs: str
    quantity: str
    """What is compared, and how the relative difference is taken."""
    tolerance: float
    max_relative_difference: float
    differences: list[float] = field(default_factory=list)
    """One relative difference per compared tensor (request, layer, grid)."""
    patches: list[str] = field(default_factory=list)
    by_design: str = ""
    """Why the two are meant to differ here (a documented difference); empty: meant to agree."""

    @property
    def passed(self) -> bool:
        """Agrees within the tolerance (a row that differs by design always passes)."""
        return bool(self.by_design) or self.max_relative_difference <= self.tolerance

    @property
    def status(self) -> str:
        if self.by_design:
            return "differs by design"
        return "pass" if self.passed else "FAIL"
