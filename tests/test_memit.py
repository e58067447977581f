"""MEMIT on tiny GPT-2 models: the closed form in float64, several requests at once, several
layers, applying and restoring weights, failures mid-edit, and the registered method."""

from __future__ import annotations

import pytest
import torch

from remedi import corpora, data, errors, evaluation, models
from remedi.methods import base, common, hparams_file, memit, stats
from tests.conftest import float64_copy, weighty_gpt2
from tests.test_weight_methods import (
    CORPUS,
    FIXTURES,
    TEMPLATES,
    TEXTS,
    assert_raises_new_targets_and_restores,
    assert_unchanged,
    corpus_file,
    file_times,
    weights_of,
)

REQUESTS = [
    common.EditRequest("Mira Talovan lives in the city of", "Mira Talovan", "Oslo"),
    common.EditRequest("Xavi Bornadel lives in the city of", "Xavi Bornadel", "Paris"),
]


@pytest.fixture(scope="module")
def mt4(tokenizer) -> models.ModelAndTokenizer:
    """Four layers, so that MEMIT can spread over two and still have layers above them."""
    return weighty_gpt2(tokenizer, "tiny-gpt2-4", n_layer=4)


@pytest.fixture(scope="module")
def mt64(mt4) -> models.ModelAndTokenizer:
    """float64: the closed-form checks compare quantities equal only in exact arithmetic."""
    return float64_copy(mt4, "tiny-64")


def moments_of(mt: models.ModelAndTokenizer, layers: list[int]) -> dict[int, torch.Tensor]:
    return {layer: stats.second_moment(mt, layer, TEXTS, len(CORPUS)).moment for layer in layers}


def mean_log_prob(mt: models.ModelAndTokenizer, request: common.EditRequest) -> float:
    ids = common.target_token_ids(mt.tokenizer, request.prompt, request.target_new)
    batch = common.edit_batch(mt.tokenizer, [request.prompt], request.subject, [ids])
    with torch.no_grad():
        logits = mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(common.target_log_probs(logits, batch)[0])


def test_one_layer_update_maps_the_keys_to_the_residuals(mt64):
    layer = 1
    hparams = memit.MemitHparams(layers=[layer], v_num_grad_steps=5, mom2_update_weight=3.0)
    moment = moments_of(mt64, [layer])[layer].double()
    update = memit.compute_update(mt64, REQUESTS, hparams, {layer: moment}, TEMPLATES)
    (layer_update,) = update.layers
    projection = models.determine_mlp_output(mt64.model, layer)
    delta = layer_update.delta()
    out_in = delta.T if projection.transposed else delta
    assert torch.linalg.matrix_rank(out_in) == len(REQUESTS)

    keys = memit.averaged_keys(mt64, layer, REQUESTS, TEMPLATES).double()
    residuals = (update.targets - memit.residual_stream(mt64, layer, REQUESTS)).double()
    # The normal equations of MEMIT's objective: delta (lambda C + K K^T) = R K^T.
    lhs = out_in @ (hparams.mom2_update_weight * moment + keys.T @ keys)
    # Keys and targets are read in float32 by design; the solve and products are float64.
    torch.testing.assert_close(lhs, residuals.T @ keys, rtol=1e-6, atol=1e-8)

    # One request: Sherman-Morrison gives ROME's closed form with lambda in the denominator,
    # so the edited MLP moves the request's key by (z - h) s / (lambda + s), s = k^T C^-1 k.
    single = memit.compute_update(mt64, REQUESTS[:1], hparams, {layer: moment}, TEMPLATES)
    key = memit.averaged_keys(mt64, layer, REQUESTS[:1], TEMPLATES).double()[0]
    residual = single.targets[0].double() - memit.residual_stream(mt64, layer, REQUESTS[:1])[0]
    s = key @ torch.linalg.solve(moment, key)
    moved = common.weight_as_out_in(single.layers[0].delta(), projection) @ key
    torch.testing.assert_close(moved, residual * s / (hparams.mom2_update_weight + s))
    # Near lambda = 0 the update writes the whole residual: the layer maps k to the target.
    exact = memit.MemitHparams(layers=[layer], v_num_grad_steps=5, mom2_update_weight=1e-9)
    full = memit.compute_update(mt64, REQUESTS[:1], exact, {layer: moment}, TEMPLATES)
    moved = common.weight_as_out_in(full.layers[0].delta(), projection) @ key
    torch.testing.assert_close(moved, residual, rtol=1e-6, atol=1e-8)


def test_each_layer_writes_its_share_of_the_remaining_residual(mt64):
    """MEMIT spreads z - h over the layers: layer j of L writes 1 / (L - j + 1) of what is left
    after the layers below it were edited (half at the first of two, all the rest at the last)."""
    layers = [0, 1]
    hparams = memit.MemitHparams(layers=layers, v_num_grad_steps=5, mom2_update_weight=1e-9)
    moments = moments_of(mt64, layers)
    moments = {layer: moment.double() for layer, moment in moments.items()}
    update = memit.compute_update(mt64, REQUESTS[:1], hparams, moments, TEMPLATES)
    target = update.targets[0].double()
    first, second = update.layers
    # Near lambda = 0 a layer maps its key to the residual it was given exactly.
    key = memit.averaged_keys(mt64, 0, REQUESTS[:1], TEMPLATES).double()[0]
    before = memit.residual_stream(mt64, 1, REQUESTS[:1])[0].double()
    projection = models.determine_mlp_output(mt64.model, 0)
    moved = common.weight_as_out_in(first.delta(), projection) @ key
    torch.testing.assert_close(moved, (target - before) / 2, rtol=1e-6, atol=1e-8)

    saved = base.write_weights(
        mt64.model,
        {first.weight_name: first.new_weight(mt64.model.get_parameter(first.weight_name))},
    )
    try:  # the second layer sees the first one's edit and writes all that is left
        key = memit.averaged_keys(mt64, 1, REQUESTS[:1], TEMPLATES).double()[0]
        between = memit.residual_stream(mt64, 1, REQUESTS[:1])[0].double()
    finally:
        base.write_weights(mt64.model, saved)
    projection = models.determine_mlp_output(mt64.model, 1)
    moved = common.weight_as_out_in(second.delta(), projection) @ key
    torch.testing.assert_close(moved, target - between, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(between, before)  # the first layer's edit did move the stream


def test_update_norm_is_bounded_by_the_clamped_value(mt64):
    layer = 0
    hparams = memit.MemitHparams(layers=[layer], v_num_grad_steps=8, mom2_update_weight=1.0)
    moment = moments_of(mt64, [layer])[layer].double()
    update = memit.compute_update(mt64, REQUESTS[:1], hparams, {layer: moment}, TEMPLATES)
    clean = memit.residual_stream(mt64, layer, REQUESTS[:1])[0].double()
    residual = update.targets[0].double() - clean
    # z - h is the optimised delta, clamped to clamp_norm_factor |h| (h: the clean output).
    assert residual.norm() <= hparams.clamp_norm_factor * clean.norm() * (1 + 1e-6)
    key = memit.averaged_keys(mt64, layer, REQUESTS[:1], TEMPLATES).double()[0]
    eigenvalues = torch.linalg.eigvalsh(moment)
    # |delta W| = |z - h| |C^-1 k| / (lambda + k^T C^-1 k) <= |z - h| cond(C) / |k|.
    bound = residual.norm() * eigenvalues[-1] / eigenvalues[0] / key.norm()
    assert update.layers[0].delta().norm() <= bound


def test_a_batch_of_requests_over_two_layers_is_written_and_restored(mt4):
    layers = [0, 1]
    hparams = memit.MemitHparams(
        layers=layers, v_num_grad_steps=20, clamp_norm_factor=4.0, mom2_update_weight=0.5
    )
    before = weights_of(mt4)
    new = memit.edit(mt4, REQUESTS, hparams, moments_of(mt4, layers), TEMPLATES)
    assert sorted(new) == [f"transformer.h.{layer}.mlp.c_proj.weight" for layer in layers]
    assert_unchanged(mt4, before)
    original = [mean_log_prob(mt4, request) for request in REQUESTS]
    saved = base.write_weights(mt4.model, new)
    try:
        edited = [mean_log_prob(mt4, request) for request in REQUESTS]
        changed = [n for n, p in mt4.model.named_parameters() if not torch.equal(p, before[n])]
        assert sorted(changed) == sorted(new)
    finally:
        base.write_weights(mt4.model, saved)
    assert_unchanged(mt4, before)
    for request, was, now in zip(REQUESTS, original, edited, strict=True):
        assert now > was + 0.5, request


def test_failures_leave_the_weights_and_no_hooks(mt4, monkeypatch):
    before = weights_of(mt4)
    moments = moments_of(mt4, [0, 1])
    with pytest.raises(errors.UsageError, match="out of range"):
        memit.compute_update(mt4, REQUESTS, memit.MemitHparams(layers=[3, 4]), moments, TEMPLATES)
    with pytest.raises(errors.UsageError, match="key statistics C of layer 1"):
        memit.compute_update(mt4, REQUESTS, memit.MemitHparams(layers=[0, 1]), {0: moments[0]})
    with pytest.raises(errors.MismatchError, match="do not fit"):
        wrong = {0: moments[0], 1: torch.eye(3)}
        memit.compute_update(mt4, REQUESTS, memit.MemitHparams(layers=[0, 1]), wrong, TEMPLATES)
    with pytest.raises(errors.UsageError, match="at least one edit request"):
        memit.compute_update(mt4, [], memit.MemitHparams(layers=[0]), moments, TEMPLATES)
    broken = memit.MemitHparams(layers=[0], v_lr=1e30, clamp_norm_factor=float("inf"))
    with pytest.raises(errors.RemediError, match="lower v_lr"):
        memit.compute_update(mt4, REQUESTS, broken, moments, TEMPLATES)
    assert_unchanged(mt4, before)

    # A failure at the second layer, while the first layer's update is substituted in.
    calls = {"count": 0}
    averaged_keys = memit.averaged_keys

    def failing(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise RuntimeError("out of memory")
        return averaged_keys(*args, **kwargs)

    monkeypatch.setattr(memit, "averaged_keys", failing)
    hparams = memit.MemitHparams(layers=[0, 1], v_num_grad_steps=3)
    with pytest.raises(RuntimeError, match="out of memory"):
        memit.compute_update(mt4, REQUESTS, hparams, moments, TEMPLATES)
    assert calls["count"] == 2
    assert_unchanged(mt4, before)
    assert all(isinstance(p, torch.nn.Parameter) for p in mt4.model.parameters())
    with pytest.raises(errors.UsageError, match="has shape"):
        base.write_weights(mt4.model, {"transformer.h.0.mlp.c_proj.weight": torch.zeros(2)})
    assert_unchanged(mt4, before)


def test_memit_is_registered_one_case_at_a_time(mt4, tmp_path):
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    cases = evaluation.counterfact_cases(records)
    hparams = memit.MemitHparams(
        layers=[0, 1],
        context_template_lengths=[],
        clamp_norm_factor=4.0,
        mom2_update_weight=0.5,
        stats_dataset=corpus_file(tmp_path),
    )
    corpus = corpora.open_corpus(hparams.stats_dataset)
    for layer in hparams.layers:
        stats.second_moment(mt4, layer, corpus, hparams.stats_num_texts, tmp_path / "stats")
    cached = file_times(tmp_path / "stats")
    method = evaluation.build_method(
        "memit",
        mt4,
        cases,
        evaluation.EvalResources(),
        hparams=hparams,
        stats_dir=tmp_path / "stats",
    )
    # The method opened the same corpus by its spec and read the cache, not a new computation.
    assert file_times(tmp_path / "stats") == cached
    assert isinstance(method, evaluation.WeightEditMethod)
    assert isinstance(method.editor, memit.MemitEditor)
    assert method.label == "MEMIT (L0-1)" and method.editor.templates == ["{}"]
    assert_raises_new_targets_and_restores(mt4, method, cases)
    assert memit.MemitHparams.from_file(hparams_file("memit", "gptj")).layers == [3, 4, 5, 6, 7, 8]
    assert memit.MemitHparams.from_file(hparams_file("memit", "toy")).layers


def test_shrinking_the_statistics_keeps_their_scale_and_checks_its_range():
    moment = torch.tensor([[4.0, 1.0], [1.0, 2.0]])
    assert torch.equal(common.shrink_moment(moment, 0.0), moment.double())
    half = common.shrink_moment(moment, 0.5)
    expected = torch.tensor([[3.5, 0.5], [0.5, 2.5]], dtype=torch.float64)
    torch.testing.assert_close(half, expected)  # exact in binary: 0.5 * 4 + 0.5 * 3 = 3.5
    assert torch.trace(half) == torch.trace(moment.double())
    with pytest.raises(errors.UsageError, match="mom2_shrinkage"):
        common.shrink_moment(moment, 1.5)


def test_averaged_keys_hold_under_a_float64_default_dtype(mt4):
    """Users who set torch's default dtype to float64 (as closed-form checks do) still get keys:
    the template weights once took the default dtype and the einsum with the float32 keys
    failed."""
    templates = ["{}", "One day. {}", "Then. {}"]
    expected = memit.averaged_keys(mt4, 1, REQUESTS, templates)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        keys = memit.averaged_keys(mt4, 1, REQUESTS, templates)
    finally:
        torch.set_default_dtype(default)
    assert keys.dtype == torch.float32
    torch.testing.assert_close(keys, expected)
    # The bare prompt weighs as much as all prefixes together: (k + (k_a + k_b) / 2) / 2.
    bare = memit.averaged_keys(mt4, 1, REQUESTS, ["{}"])
    key_a = 2 * memit.averaged_keys(mt4, 1, REQUESTS, templates[:2]) - bare
    key_b = 2 * memit.averaged_keys(mt4, 1, REQUESTS, [templates[0], templates[2]]) - bare
    torch.testing.assert_close(expected, (bare + (key_a + key_b) / 2) / 2, rtol=1e-4, atol=1e-5)
