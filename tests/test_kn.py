"""Knowledge Neurons on tiny GPT-2 and Llama models: the integrated gradients' completeness,
the selection, the edit of exactly the selected rows, exact restoring, bad input, and the
registry."""

from __future__ import annotations

import pytest
import torch

from remedi import errors, evaluation, hooks, models
from remedi.methods import base, common, hparams_file, kn, registry
from tests.conftest import float64_copy, weighty_gpt2
from tests.model_fixtures import tiny_llama, tiny_model

PROMPT = "Mira Talovan lives in the city of"
REQUEST = common.EditRequest(
    prompt=PROMPT, subject="Mira Talovan", target_new="Paris", target_true="Lisbon"
)


@pytest.fixture(scope="module")
def gpt2(tokenizer) -> models.ModelAndTokenizer:
    """float64: completeness and the edit's amounts are compared to tight tolerances."""
    return float64_copy(weighty_gpt2(tokenizer), "tiny-gpt2-64")


@pytest.fixture(scope="module")
def llama(llama_tokenizer) -> models.ModelAndTokenizer:
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).requires_grad_(False).double()
    return models.ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")


def answer_probability(
    mt: models.ModelAndTokenizer, answer_ids: list[int], layer: int, scale: float, site: str
) -> float:
    """p(answer) at the prompt's last token, the layer's neurons there multiplied by ``scale``
    (read independently of KN's code: a hook on the module the site names)."""

    def scaled(key: str, hidden: torch.Tensor) -> torch.Tensor:
        edited = hidden.clone()
        edited[:, -1] = edited[:, -1] * scale
        return edited

    if site == "pre":
        path = models.determine_mlp_input(mt.model, layer)
    else:
        path = models.determine_mlp_output(mt.model, layer).module_path
    inputs = mt.tokenizer(PROMPT, return_tensors="pt")
    with (
        torch.no_grad(),
        hooks.trace(
            mt.model,
            {"site": path},
            edit_input=scaled if site == "post" else None,
            edit_output=scaled if site == "pre" else None,
        ),
    ):
        logits = mt.model(input_ids=inputs.input_ids).logits[0, -1]
    return float(torch.softmax(logits, dim=-1)[answer_ids].mean())


@pytest.mark.parametrize("site", ["pre", "post"])
@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_attributions_add_up_to_the_change_of_probability(model_name, site, request):
    # Integrated gradients' completeness: the attributions of a layer's neurons add up to
    # p(actual activations) - p(all zero), up to the Riemann sum's error, which shrinks with steps.
    mt = request.getfixturevalue(model_name)
    answer = kn.greedy_tokens(mt, PROMPT, 2)  # a likely answer: a change worth measuring
    for layer in (0, 1):
        change = answer_probability(mt, answer, layer, 1.0, site) - answer_probability(
            mt, answer, layer, 0.0, site
        )
        assert abs(change) > 1e-4
        errors_by_steps = {}
        for steps, batch_size in ((4, 4), (64, 10)):  # 64 % 10: a short last batch
            scores = kn.integrated_gradients(mt, PROMPT, answer, layer, steps, batch_size, site)
            assert scores.shape == kn.activations(mt, PROMPT, layer, site).shape
            errors_by_steps[steps] = abs(float(scores.sum()) - change)
        assert errors_by_steps[64] < 0.02 * abs(change)
        assert errors_by_steps[64] < errors_by_steps[4] / 4


def test_batches_do_not_change_the_attributions(gpt2):
    answer = kn.greedy_tokens(gpt2, PROMPT, 1)
    whole = kn.integrated_gradients(gpt2, PROMPT, answer, 1, steps=12, batch_size=12)
    split = kn.integrated_gradients(gpt2, PROMPT, answer, 1, steps=12, batch_size=5)
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-14)
    # One step is the gradient at the zero baseline alone (linspace(0, 1, 1) == [0]), as the
    # reference's LLaMA files run it.
    activation = kn.activations(gpt2, PROMPT, 1)
    one = kn.integrated_gradients(gpt2, PROMPT, answer, 1, steps=1, batch_size=1)
    assert one.shape == activation.shape and torch.count_nonzero(one) > 0


def test_the_selected_neurons_are_those_above_the_share_of_the_largest_attribution(gpt2):
    hparams = kn.KnHparams(steps=8, batch_size=8, adaptive_threshold=0.3)
    answer = common.target_token_ids(gpt2.tokenizer, PROMPT, "Lisbon")
    scores = kn.attribution_scores(gpt2, PROMPT, answer, hparams)
    assert scores.shape[0] == gpt2.num_layers
    threshold = 0.3 * float(scores.max())
    expected = {
        (layer, index)
        for layer in range(scores.shape[0])
        for index in range(scores.shape[1])
        if float(scores[layer, index]) > threshold
    }
    selected = kn.select_neurons(gpt2, [PROMPT], answer, hparams)
    assert set(selected) == expected and len(selected) == len(expected)
    assert 0 < len(selected) < scores.numel()
    # Only the given layers are attributed, and their neurons are named by their own layer.
    only_one = kn.select_neurons(gpt2, [PROMPT], answer, kn.KnHparams(steps=8, layers=[1]))
    assert only_one and {layer for layer, _ in only_one} == {1}


def test_refining_keeps_neurons_shared_by_more_than_p_of_the_prompts():
    per_prompt = [[(0, 1), (1, 2), (1, 3)], [(0, 1), (1, 2)], [(0, 1), (0, 7)]]
    # 3 prompts, p 0.4: more than 1.2 prompts, i.e. at least two.
    assert kn.refined_neurons(per_prompt, 0.4, refine=True) == [(0, 1), (1, 2)]
    assert kn.refined_neurons(per_prompt, 0.4, refine=False) == [(0, 1), (1, 2), (1, 3), (0, 7)]
    # One prompt (what the method gives, as the reference): refining keeps everything.
    assert kn.refined_neurons(per_prompt[:1], 0.4, refine=True) == per_prompt[0]


def _output_rows(mt: models.ModelAndTokenizer, layer: int) -> torch.Tensor:
    projection = models.determine_mlp_output(mt.model, layer)
    weight = mt.model.get_parameter(projection.weight_name).detach().clone()
    return weight if projection.transposed else weight.T


@pytest.mark.parametrize("model_name", ["gpt2", "llama"])
def test_the_edit_moves_exactly_the_selected_rows_and_restores_them(model_name, request):
    mt = request.getfixturevalue(model_name)
    hparams = kn.KnHparams(steps=8, batch_size=8)
    editor = registry.prepare("kn", mt, hparams=hparams)
    assert isinstance(editor, kn.KnEditor) and editor.name == "kn"
    new_ids = common.target_token_ids(mt.tokenizer, PROMPT, REQUEST.target_new)
    old_ids = common.target_token_ids(mt.tokenizer, PROMPT, REQUEST.target_true)
    update = editor.compute(mt, [REQUEST])
    assert update.neurons == kn.select_neurons(mt, [PROMPT], old_ids, hparams)
    predicted = kn.greedy_tokens(mt, PROMPT, len(new_ids))
    embeddings = mt.model.get_input_embeddings().weight.detach()
    erase = 2.0 if len(new_ids) == 1 else 1.0  # the reference's factors
    expected_delta = embeddings[new_ids].sum(0) - erase * embeddings[predicted].sum(0)

    before = {name: p.detach().clone() for name, p in mt.model.named_parameters()}
    rows_before = {layer: _output_rows(mt, layer) for layer in range(mt.num_layers)}
    with base.weights_applied(mt.model, update.new_weights(mt.model), "kn"):
        changed = {n for n, p in mt.model.named_parameters() if not torch.equal(p, before[n])}
        edited_layers = {layer for layer, _ in update.neurons}
        assert changed == {
            models.determine_mlp_output(mt.model, layer).weight_name for layer in edited_layers
        }
        for layer in range(mt.num_layers):
            difference = _output_rows(mt, layer) - rows_before[layer]
            indices = [index for neuron_layer, index in update.neurons if neuron_layer == layer]
            moved = torch.zeros(difference.shape[0], dtype=torch.bool)
            moved[indices] = True
            assert torch.count_nonzero(difference[~moved]) == 0
            for index in indices:
                torch.testing.assert_close(
                    difference[index], expected_delta, rtol=1e-12, atol=1e-12
                )
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_multi_token_answers_erase_each_greedy_token_once(gpt2):
    request = common.EditRequest(PROMPT, "Mira Talovan", "Honolulu Oslo", "Lisbon")
    new_ids = common.target_token_ids(gpt2.tokenizer, PROMPT, request.target_new)
    assert len(new_ids) > 1
    update = kn.compute_update(gpt2, request, kn.KnHparams(steps=4, batch_size=4))
    embeddings = gpt2.model.get_input_embeddings().weight.detach()
    predicted = kn.greedy_tokens(gpt2, PROMPT, len(new_ids))
    expected = embeddings[new_ids].sum(0) - embeddings[predicted].sum(0)
    torch.testing.assert_close(update.delta, expected, rtol=1e-12, atol=1e-12)


def test_the_registered_method_edits_a_counterfact_case_and_restores(gpt2):
    case = evaluation.EvalCase(
        case_id=1,
        entity=REQUEST.subject,
        relation_id="P551",
        prompt=PROMPT,
        context="",
        attribute="",
        target_new=REQUEST.target_new,
        target_new_id="Q1",
        target_true=REQUEST.target_true,
        target_true_id="Q2",
        rewrite_prompt=PROMPT,
    )
    method = evaluation.build_method(
        "kn", gpt2, [case], evaluation.EvalResources(), hparams=kn.KnHparams(steps=8)
    )
    assert isinstance(method, evaluation.WeightEditMethod) and method.label == "KN"
    before = {name: p.detach().clone() for name, p in gpt2.model.named_parameters()}
    query = [(case, PROMPT, REQUEST.target_new)]
    plain = evaluation.target_log_probs(gpt2, evaluation.Method(), query)
    edited = evaluation.target_log_probs(gpt2, method, query)
    assert float(edited[0]) != float(plain[0])
    for name, parameter in gpt2.model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_bad_layers_targets_and_options_raise_clearly(gpt2):
    with pytest.raises(errors.UsageError, match="out of range"):
        registry.prepare("kn", gpt2, hparams=kn.KnHparams(layers=[7]))
    editor = registry.prepare("kn", gpt2, hparams=kn.KnHparams(steps=2))
    assert isinstance(editor, kn.KnEditor)
    with pytest.raises(errors.UsageError, match="one fact at a time"):
        editor.compute(gpt2, [REQUEST, REQUEST])
    for answer in ([], [len(gpt2.tokenizer) + 5]):
        with pytest.raises(errors.UsageError, match="token ids of the model's vocabulary"):
            kn.integrated_gradients(gpt2, PROMPT, answer, 0)
    with pytest.raises(errors.SampleError, match="empty target_new"):
        common.EditRequest(PROMPT, "Mira Talovan", " ", "Lisbon")
    with pytest.raises(errors.UsageError, match="site must be one of pre, post"):
        kn.KnHparams(site="gelu")
    with pytest.raises(errors.UsageError, match="layers is empty"):
        kn.KnHparams(layers=[])
    with pytest.raises(errors.UsageError, match=r"adaptive_threshold must be in \[0, 1\)"):
        kn.KnHparams(adaptive_threshold=1.0)
    with pytest.raises(errors.UsageError, match="has no option thresh"):
        registry.prepare("kn", gpt2, hparams=kn.KnHparams(), thresh=0.1)


def test_packaged_kn_hparams_are_the_references():
    # EasyEdit's hparams/KN/gpt2-xl.yaml and gpt-j-6B.yaml (Gu et al.'s KN).
    gpt2_xl = kn.KnHparams.from_json(hparams_file("kn", "gpt2-xl").read_text())
    assert (gpt2_xl.steps, gpt2_xl.batch_size, gpt2_xl.adaptive_threshold) == (20, 20, 0.2)
    gptj = kn.KnHparams.from_json(hparams_file("kn", "gptj").read_text())
    assert (gptj.steps, gptj.batch_size, gptj.adaptive_threshold) == (20, 20, 0.1)
    for model in ("gpt2-xl", "gptj", "toy", "smollm2-135m", "llama-7b"):
        hparams = registry.load_hparams("kn", model)
        assert not hparams.refine and hparams.p == 0.4 and hparams.layers is None
        assert (hparams.erase_scale, hparams.enhance_scale) == (2.0, 1.0)
    assert "kn" in registry.names("weights", prepared=True)
    moved = registry.moved_to_layer("kn", gpt2_xl.to_dict(), 1, 4)
    assert moved["layers"] == [1]


@pytest.mark.parametrize(
    ("family", "path"),
    [
        ("gpt2", "transformer.h.1.mlp.c_fc"),
        ("gptj", "transformer.h.1.mlp.fc_in"),
        ("gpt_neox", "gpt_neox.layers.1.mlp.dense_h_to_4h"),
        ("llama", "model.layers.1.mlp.gate_proj"),
    ],
)
def test_the_mlp_first_projection_has_one_output_per_neuron_of_the_output_projection(family, path):
    model = tiny_model(family)
    assert models.determine_mlp_input(model, 1) == path
    first = model.get_submodule(path)
    outputs = first(torch.zeros(1, models.determine_hidden_size(model))).shape[-1]
    assert outputs == models.determine_mlp_output(model, 1).in_features
    with pytest.raises(errors.UsageError, match="out of range"):
        models.determine_mlp_input(model, 3)


def test_signed_rows_follow_the_sign_of_each_neurons_activation(llama):
    # Ours (signed_edit): row i gets sign(h_i) delta, h the output projection's input at the
    # prompt's last token; the reference (default) gives every row +delta.
    hparams = kn.KnHparams(steps=8, batch_size=8, signed_edit=True)
    update = kn.compute_update(llama, REQUEST, hparams)
    assert update.signs is not None and len(update.signs) == len(update.neurons)
    unsigned = kn.compute_update(llama, REQUEST, kn.KnHparams(steps=8, batch_size=8))
    assert unsigned.signs is None and unsigned.neurons == update.neurons
    rows_before = {layer: _output_rows(llama, layer) for layer in range(llama.num_layers)}
    post = {layer: kn.activations(llama, PROMPT, layer, "post") for layer in rows_before}
    assert {-1.0, 1.0} <= set(update.signs)  # both signs occur: the two edits differ
    with base.weights_applied(llama.model, update.new_weights(llama.model), "kn"):
        for (layer, index), sign in zip(update.neurons, update.signs, strict=True):
            assert sign == (1.0 if float(post[layer][index]) >= 0 else -1.0)
            difference = _output_rows(llama, layer)[index] - rows_before[layer][index]
            torch.testing.assert_close(difference, sign * update.delta, rtol=1e-12, atol=1e-12)
