"""The two protocols of the editing problems, as data: which facts are edited, what the tracing
effect measures, under what noise, with which per-problem hyperparameters, and how R^2 groups.

``reference`` (the default) is google/belief-localization's, read line by line (paths under
``third_party/``):

- Facts (``experiments/evaluate.py:453-472``, called with ``target_prob_check=.02`` at :851):
  a greedy generation of 36 new tokens after the rewrite prompt contains o_true (case-folded
  and stripped, ``util/fewshot_utils.py:92-129,139-197``), and ``p(o_true | s, r) > 0.02``,
  ``p`` the product of the teacher-forced probabilities of the tokens of ``" " + o_true``
  tokenized on its own after the prompt's (``util/fewshot_utils.py:18-55,65-86``). The
  analysis keeps the facts whose generation is correct (``data-analysis.ipynb``, "R2 values for
  each method": ``filter(is_correct >= correctness_filter)`` with ``correctness_filter = 1``),
  and tracing keeps those with ``p >= 0.02`` (``experiments/tracing.py:391-400,613``).
- Tracing effect (``experiments/tracing.py:562,597-613``, ``experiments/causal_trace.py:
  289-297,333-357``): the MLP output restored over a window of layers, the probability traced
  being the teacher-forced probability of the whole o_true, averaged over 10 noise samples;
  noise of a fixed scale per model, 0.1 for GPT-2 XL and 0.094 for GPT-J
  (``experiments/tracing.py:578-589``), the same scale the edits of forcing and reversal are
  noised with (``hparams/*/gpt2-xl*.json``, ``hparams/*/EleutherAI_gpt-j-6B*.json``:
  ``editing_noise``). For other models the reference falls back to 0.03 (NeoX) or 0.01; we use
  ROME's 3 standard deviations of the subjects' embeddings instead (:data:`NOISE_BY_MODEL`
  lists the fixed ones), and record which in the results.
- Per-problem hyperparameters (``experiments/evaluate.py:57-136``, ``get_override_hparams``):
  :data:`PROBLEM_HPARAMS`, by method and problem; edit windows (:data:`EDIT_WINDOWS`): MEMIT
  edits 5 layers around the central one (``evaluate.py:93-100,773-774``; the analysis's
  conditions FT 1, FT 5, ROME 1, MEMIT 5).
- R^2 (``data-analysis.ipynb``, "R2 values for each method"): per (method, edit window,
  problem), never pooled across methods.

``ours`` is the protocol this project ran first, kept as a named option: facts whose top-1 next
token is o_true's first token with ``p(o_true) > 0.1``; the tracing effect of o_true's first
token at the prompt's last position under 3 sigma noise; each method's packaged hyperparameters
for every problem; R^2 per method, and pooled over methods on request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dataclasses_json import DataClassJsonMixin

from remedi import errors, models

PROTOCOLS = ("reference", "ours")
DEFAULT_PROTOCOL = "reference"

NOISE_BY_MODEL: dict[str, float] = {
    # experiments/tracing.py:578-583 (tracing) and the hparams files' editing_noise (edits).
    "gpt2-xl": 0.1,
    "EleutherAI/gpt-j-6B": 0.094,
}
"""The reference's fixed noise scale by model (hub name); other models take 3 sigma."""

GENERATION_TOKENS = 36
"""New tokens of the reference's greedy generation (``experiments/evaluate.py:457-461``)."""

MIN_TRUE_PROB = {"reference": 0.02, "ours": 0.1}
"""``p(o_true | s, r)`` must exceed this (``experiments/evaluate.py:465,851``; ours: 0.1)."""

EDIT_WINDOWS: dict[str, int] = {"ft": 1, "ft5": 5, "rome": 1, "memit": 5}
"""Layers each method edits around the central layer in the reference protocol."""

_FT_FORCING_STEPS = {"num_steps": 50}  # evaluate.py:123-125
PROBLEM_HPARAMS: dict[str, dict[str, dict[str, Any]]] = {
    # FT at window 1: the norm bound per problem, evaluate.py:73-85; forcing's steps :123-125.
    "ft": {
        "error_injection": {"norm_constraint": 1e-4},
        "tracing_reversal": {"norm_constraint": 1e-3},
        "fact_erasure": {"norm_constraint": 1e-5},
        "fact_amplification": {"norm_constraint": 5e-5},
        "fact_forcing": {"norm_constraint": 1e-4, **_FT_FORCING_STEPS},
    },
    # FT at window 5: evaluate.py:101-113 (injection and amplification bounds differ from FT 1).
    "ft5": {
        "error_injection": {"norm_constraint": 5e-5},
        "tracing_reversal": {"norm_constraint": 1e-3},
        "fact_erasure": {"norm_constraint": 1e-5},
        "fact_amplification": {"norm_constraint": 1e-5},
        "fact_forcing": {"norm_constraint": 1e-4, **_FT_FORCING_STEPS},
    },
    # ROME: v_lr 0.5, forcing 0.05 (evaluate.py:86-92) and 25 steps of v (:126-127).
    "rome": {
        "error_injection": {"v_lr": 0.5},
        "tracing_reversal": {"v_lr": 0.5},
        "fact_erasure": {"v_lr": 0.5},
        "fact_amplification": {"v_lr": 0.5},
        "fact_forcing": {"v_lr": 0.05, "v_num_grad_steps": 25},
    },
    # MEMIT: v_lr 0.5 for every problem (evaluate.py:114-120).
    "memit": {
        problem: {"v_lr": 0.5}
        for problem in (
            "error_injection",
            "tracing_reversal",
            "fact_erasure",
            "fact_amplification",
            "fact_forcing",
        )
    },
}
"""The reference's per-problem overrides of each method's hyperparameters (GPT-J's sweep; the
same function serves GPT-2 XL)."""


@dataclass
class Protocol(DataClassJsonMixin):
    """Everything a run of the problems was computed under; saved beside its results, and a
    resumed run must match it."""

    name: str
    model: str
    method: str
    min_true_prob: float
    generation_tokens: int | None
    """The filter's greedy generation must contain o_true (None: ours, the top-1 token)."""
    whole_target: bool
    """The traced probability: the whole o_true teacher forced (reference) or its first token."""
    noise_rule: str
    """``fixed`` (the reference's value for this model) or ``3 sigma``."""
    noise_scale: float
    edit_window: int | None
    """Layers edited around the central one (None: the method's packaged width)."""
    problem_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def differences(self, other: Protocol) -> list[str]:
        """The fields in which ``other`` differs (the noise scales to 1e-9 relative)."""
        mine, theirs = self.to_dict(), other.to_dict()
        found = [key for key in mine if key != "noise_scale" and mine.get(key) != theirs.get(key)]
        if not math.isclose(self.noise_scale, other.noise_scale, rel_tol=1e-9):
            found.append("noise_scale")
        return found


def model_id(name: str) -> str:
    """The hub name of a model asked for by ``name`` (an alias such as ``gptj`` resolved)."""
    return models.MODEL_ALIASES.get(name, name)


def noise_rule(name: str, model: str) -> str:
    """``fixed`` where the reference protocol has a value for ``model``, else ``3 sigma``."""
    return "fixed" if name == "reference" and model in NOISE_BY_MODEL else "3 sigma"


def build(name: str, model: str, method: str, noise_scale: float) -> Protocol:
    """Protocol ``name`` for ``method`` on ``model`` (its hub name), at ``noise_scale``; its
    overrides cover every problem, so a run of some problems resumes with others."""
    if name not in PROTOCOLS:
        raise errors.UsageError(f"unknown protocol {name!r}; choose from {list(PROTOCOLS)}")
    reference = name == "reference"
    overrides = PROBLEM_HPARAMS.get(method, {}) if reference else {}
    return Protocol(
        name=name,
        model=model,
        method=method,
        min_true_prob=MIN_TRUE_PROB[name],
        generation_tokens=GENERATION_TOKENS if reference else None,
        whole_target=reference,
        noise_rule=noise_rule(name, model),
        noise_scale=noise_scale,
        edit_window=EDIT_WINDOWS.get(method) if reference else None,
        problem_hparams={problem: dict(values) for problem, values in overrides.items()},
    )
