"""Every weight-editing method, and causal tracing, on the real SmolLM2-135M (marker smollm2).

The toy LM was trained here on a synthetic world; these tests show that the same code edits and
traces a real pretrained LM with a real tokenizer. They are kept to one edit per method and a
two-prompt trace, with C = I (no key statistics: those need a corpus pass of minutes), so that
they run in CI in about a minute.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from remedi import models, tracing
from remedi.methods import base, common, ft, kn, memit, registry, rome
from tests.test_gguf_models import smollm2  # noqa: F401  (the fixture)

pytestmark = pytest.mark.smollm2

REQUEST = common.EditRequest(
    prompt="The capital of France is", subject="France", target_new="Rome", target_true="Paris"
)
# Hyperparameters for one cheap edit at the early-middle layers where tracing finds the subject's
# MLP effect on this model; C = I (mom2_adjustment off), no random prefixes.
NO_STATISTICS = {"mom2_adjustment": False, "context_template_lengths": []}
HPARAMS = {
    "rome": rome.RomeHparams(layer=4, **NO_STATISTICS),  # type: ignore[arg-type]
    # With C = I, MEMIT's lambda weighs the identity: 1 lets the keys' own term count.
    "memit": memit.MemitHparams(layers=[3, 4, 5], mom2_update_weight=1.0, **NO_STATISTICS),  # type: ignore[arg-type]
    # The toy's FT settings (lr 5e-4, norm bound 5e-4) leave this LM's answer as it was (measured:
    # p(Rome) 0.000 -> 0.001 at one layer). At one layer, ten times both write it; at five, a
    # norm bound of 5e-3 also moved the unrelated answer below, 2e-3 does not (measured).
    "ft": ft.FtHparams(layers=[4], lr=5e-3, norm_constraint=5e-3),
    "ft5": ft.FtHparams(layers=[2, 3, 4, 5, 6], lr=5e-3, norm_constraint=2e-3),
}
NOT_WRITING = {"kn": "erases or inverts rather than writes: test_kn_needs_signed_rows_on_smollm2"}
"""Weight methods that do not write this fact, and the test that says what they do instead."""
UNRELATED = ("The largest planet in the solar system is", "Jupiter")


def next_token_probabilities(mt: models.ModelAndTokenizer, prompt: str) -> torch.Tensor:
    """The LM's next-token distribution after ``prompt``."""
    with torch.no_grad():
        logits = mt.model(**mt.tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    return torch.softmax(logits.float(), dim=-1)


def first_token(mt: models.ModelAndTokenizer, target: str) -> int:
    return common.target_token_ids(mt.tokenizer, REQUEST.prompt, target)[0]


def test_every_weight_method_is_covered():
    assert sorted([*HPARAMS, *NOT_WRITING]) == sorted(registry.names("weights", prepared=True))


def test_kn_needs_signed_rows_on_smollm2(smollm2: models.ModelAndTokenizer):  # noqa: F811
    # KN adds E[new] - 2 E[old prediction] to each selected neuron's output row. In SmolLM2's
    # gated MLP a neuron's activation silu(gate) * up is often negative, so the reference's edit
    # (every row +delta) pushes those neurons' output away from the new answer: measured, it
    # raises p(Paris) 0.77 -> 1.00 and lowers p(Rome). With signed rows the old answer is erased.
    paris_id = first_token(smollm2, "Paris")
    before = next_token_probabilities(smollm2, REQUEST.prompt)
    unedited = {key: value.clone() for key, value in smollm2.model.state_dict().items()}
    hparams = kn.KnHparams(
        steps=5, batch_size=5, signed_edit=True
    )  # 5 points: a quarter of the time
    signed = kn.compute_update(smollm2, REQUEST, hparams)
    assert signed.signs is not None and -1.0 in signed.signs and 1.0 in signed.signs
    reference = dataclasses.replace(signed, signs=None)  # the same neurons, every row +delta
    after = {}
    for name, update in (("signed", signed), ("reference", reference)):
        with base.weights_applied(smollm2.model, update.new_weights(smollm2.model), "kn"):
            after[name] = next_token_probabilities(smollm2, REQUEST.prompt)
    assert after["signed"][paris_id] < 0.01 < before[paris_id]
    assert after["reference"][paris_id] > before[paris_id]
    for key, value in smollm2.model.state_dict().items():
        assert torch.equal(value, unedited[key]), key


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_each_weight_method_writes_a_fact_into_smollm2_and_restores_it(
    smollm2: models.ModelAndTokenizer,  # noqa: F811
    name: str,
):
    rome_id, paris_id = first_token(smollm2, "Rome"), first_token(smollm2, "Paris")
    before = next_token_probabilities(smollm2, REQUEST.prompt)
    assert int(before.argmax()) == paris_id  # the LM knows the fact that is rewritten
    unedited = {key: value.clone() for key, value in smollm2.model.state_dict().items()}

    editor = registry.prepare(name, smollm2, base.MethodSetup(), HPARAMS[name])
    assert isinstance(editor, base.WeightEditor)
    new_weights = editor.new_weights(smollm2, [REQUEST])
    with base.weights_applied(smollm2.model, new_weights, name):
        after = next_token_probabilities(smollm2, REQUEST.prompt)
        unrelated = next_token_probabilities(smollm2, UNRELATED[0])

    assert after[rome_id] > 0.5 > before[rome_id] and after[paris_id] < before[paris_id]
    # An unrelated fact keeps its answer. (A near one does not: with C = I, ROME's and MEMIT's
    # edit also answers "The capital of Germany is" with Rome, p 0.62 and 0.46, measured; the key
    # statistics are what keeps such neighbours apart.)
    assert int(unrelated.argmax()) == common.target_token_ids(smollm2.tokenizer, *UNRELATED)[0]
    for key, value in smollm2.model.state_dict().items():
        assert torch.equal(value, unedited[key]), key


def test_tracing_two_prompts_on_smollm2_finds_the_clean_answer_and_restores_it(
    smollm2: models.ModelAndTokenizer,  # noqa: F811
):
    settings = tracing.TraceSettings(noise_scale=0.1, num_samples=2, kinds=["mlp"], windows=[5])
    for prompt, subject, target in (
        ("The capital of France is", "France", "Paris"),
        ("The capital of Germany is", "Germany", "Berlin"),
    ):
        result = tracing.trace_prompt(smollm2, prompt, subject, target, settings)
        assert result.correct, prompt
        scores = torch.tensor(result.scores["mlp/5"])
        assert scores.shape[-1] == smollm2.num_layers
        # Restoring MLPs somewhere recovers part of what the noise took away.
        assert result.clean_prob > result.corrupted_prob
        assert float(scores.max()) > result.corrupted_prob
