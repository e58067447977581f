"""Weight editing (ROME, FT) on tiny GPT-2 and Llama models: the closed form, the tokens, the
statistics cache, bad input, and the registered evaluation methods."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import datasets
import pytest
import torch

from remedi import corpora, data, errors, evaluation, models
from remedi.methods import base, common, ft, rome, stats
from tests.conftest import TOKENIZER_CORPUS, float64_copy, tiny_gpt2, weighty_gpt2
from tests.model_fixtures import tiny_llama, tiny_model

FIXTURES = Path(__file__).parent / "fixtures"


def shuffled_corpus(count: int = 150, seed: int = 0) -> list[str]:
    """Texts of the tokenizer's words in random order: many distinct contexts, so that the key
    statistics of a tiny model are well conditioned (the fixed sentences alone give few)."""
    words = " ".join(TOKENIZER_CORPUS).split()
    rng = random.Random(seed)
    return [" ".join(rng.sample(words, 12)) for _ in range(count)]


CORPUS = shuffled_corpus()
TEXTS = corpora.from_texts("corpus", CORPUS)
"""CORPUS as a statistics corpus (held in memory, keyed by its texts)."""


def cached_only(corpus: corpora.Corpus) -> corpora.Corpus:
    """``corpus`` whose texts cannot be read (only counted): statistics of it can only come
    from a cache."""

    def unreadable(*args: object) -> list[str]:
        raise AssertionError(f"the texts of {corpus.name} were read: the cache was not used")

    return dataclasses.replace(corpus, read=unreadable, read_at=unreadable)


def file_times(directory: Path) -> dict[Path, int]:
    """When each file below ``directory`` was last written: equal before and after a step that
    only read them."""
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*")}


def corpus_file(directory: Path) -> str:
    """CORPUS written to a text file (a text per line); returns its corpus spec ``file:PATH``."""
    path = directory / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return f"file:{path}"


REQUEST = common.EditRequest(
    prompt="Mira Talovan lives in the city of", subject="Mira Talovan", target_new="Oslo"
)
# One prefix besides the bare prompt: the averaged key then differs from the bare prompt's.
TEMPLATES = ["{}", "Kelo Vantri works for Nordavia. {}"]


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


@pytest.fixture(scope="module")
def mt64(mt) -> models.ModelAndTokenizer:
    """float64: the closed-form checks compare quantities equal only in exact arithmetic."""
    return float64_copy(mt, "tiny-gpt2-64")


@pytest.fixture(scope="module")
def llama(llama_tokenizer) -> models.ModelAndTokenizer:
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).requires_grad_(False)
    return models.ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")


def moment_of(mt: models.ModelAndTokenizer, layer: int) -> torch.Tensor:
    return stats.second_moment(mt, layer, TEXTS, len(CORPUS)).moment


def log_prob(mt: models.ModelAndTokenizer, prompt: str, target: str) -> float:
    ids = common.target_token_ids(mt.tokenizer, prompt, target)
    batch = common.edit_batch(mt.tokenizer, [prompt], REQUEST.subject, [ids])
    with torch.no_grad():
        logits = mt.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(common.target_log_probs(logits, batch)[0])


def weights_of(mt: models.ModelAndTokenizer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in mt.model.named_parameters()}


def assert_unchanged(mt: models.ModelAndTokenizer, before: dict[str, torch.Tensor]) -> None:
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    for module in mt.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, module


def assert_raises_new_targets_and_restores(
    mt: models.ModelAndTokenizer, method: evaluation.Method, cases: list[evaluation.EvalCase]
) -> None:
    """Under ``method`` every case's new target is likelier after its rewrite prompt than
    unedited, and the model's weights and hooks are as before."""
    before = weights_of(mt)
    queries = [(case, case.rewrite_prompt, case.target_new) for case in cases]
    edited = evaluation.target_log_probs(mt, method, queries)
    plain = evaluation.target_log_probs(mt, evaluation.Method(), queries)
    assert (edited > plain).all()
    assert_unchanged(mt, before)


@pytest.mark.parametrize(
    ("family", "path", "transposed", "in_features", "has_bias"),
    [
        ("gpt2", "transformer.h.1.mlp.c_proj", True, 128, True),
        ("gptj", "transformer.h.1.mlp.fc_out", False, 128, True),
        ("gpt_neox", "gpt_neox.layers.1.mlp.dense_4h_to_h", False, 64, True),
        ("llama", "model.layers.1.mlp.down_proj", False, 64, False),
    ],
)
def test_the_mlp_output_projection_of_each_family(family, path, transposed, in_features, has_bias):
    model = tiny_model(family)
    projection = models.determine_mlp_output(model, 1)
    assert (projection.module_path, projection.transposed) == (path, transposed)
    assert (projection.in_features, projection.out_features) == (in_features, 32)
    assert projection.bias_name == (f"{path}.bias" if has_bias else None)
    if has_bias:
        assert model.get_parameter(projection.bias_name).shape == (32,)
    weight = model.get_parameter(projection.weight_name)
    keys = torch.randn(2, in_features)
    out = keys @ weight if transposed else keys @ weight.T
    assert out.shape == (2, 32)
    with pytest.raises(errors.UsageError, match="out of range"):
        models.determine_mlp_output(model, 3)


@pytest.mark.parametrize("key_in_residual", ["bare", "mean"])
@pytest.mark.parametrize("model_name", ["mt64", "llama"])
def test_rome_update_is_rank_one_and_the_closed_form(model_name, key_in_residual, request):
    mt = request.getfixturevalue(model_name)
    layer = 0
    if key_in_residual == "bare":  # the default: kmeng01/rome's closed form
        hparams = rome.RomeHparams(layer=layer, v_num_grad_steps=5)
        assert hparams.key_in_residual == "bare"
    else:
        hparams = rome.RomeHparams(layer=layer, v_num_grad_steps=5, key_in_residual="mean")
    moment = moment_of(mt, layer)
    update = rome.compute_update(mt, REQUEST, hparams, moment, TEMPLATES)
    projection = models.determine_mlp_output(mt.model, layer)
    weight = mt.model.get_parameter(projection.weight_name)
    delta = update.delta().double()
    singular_values = torch.linalg.svdvals(delta)
    # Rank one up to the float32 rounding of each entry of the outer product (relative 1e-7).
    assert singular_values[0] > 0 and singular_values[1] / singular_values[0] < 1e-5

    # The closed form, recomputed here in float64 from the keys, value and C: the direction is
    # C^-1 of the key averaged over the prefixes; the residual and the denominator read the
    # bare prompt's key (kmeng01/rome compute_v.py:170-181) or the averaged one ("mean").
    texts = [t.replace("{}", REQUEST.prompt) for t in TEMPLATES]
    mean_key = rome.subject_keys(mt, layer, texts, REQUEST.subject).double().mean(0)
    bare_key = rome.subject_keys(mt, layer, [REQUEST.prompt], REQUEST.subject).double()[0]
    assert (mean_key - bare_key).norm() > 0.1 * bare_key.norm()  # the prefix moves the key
    key = bare_key if key_in_residual == "bare" else mean_key
    module = mt.model.get_submodule(projection.module_path)
    with torch.no_grad():
        current = module(key.to(weight.dtype)[None])[0].double()
    inverse_key = torch.linalg.solve(moment.double(), mean_key)
    expected = torch.outer(update.value.double() - current, inverse_key) / (inverse_key @ key)
    out_in = delta.T if projection.transposed else delta
    # float32 keys, value and factors (the update is built in float32): relative 1e-4.
    torch.testing.assert_close(out_in, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())

    # The edited layer maps that key (the bare prompt's, or the averaged one) to v*.
    new_weight = update.new_weight(weight)
    with torch.no_grad():
        original = weight.detach().clone()
        weight.copy_(new_weight)
        try:
            edited_out = module(key.to(weight.dtype)[None])[0].double()
        finally:
            weight.copy_(original)
    torch.testing.assert_close(edited_out, update.value.double(), rtol=1e-3, atol=1e-3)
    if key_in_residual == "mean":
        # With the averaged key in both places the update's norm is bounded by
        # |v* - W k| cond(C) / |k| (kmeng01's mismatched denominator has no such bound).
        eigenvalues = torch.linalg.eigvalsh(moment.double())
        bound = (
            (update.value.double() - current).norm()
            * eigenvalues[-1]
            / eigenvalues[0]
            / mean_key.norm()
        )
        assert delta.norm() <= bound * (1 + 1e-4)
    assert torch.equal(original, mt.model.get_parameter(projection.weight_name))


def test_rome_raises_the_target_probability_and_restores_every_weight(mt, tokenizer):
    layer = 0  # of 2: the last layer's MLP at the subject cannot reach the prompt's end
    sampled = common.context_templates(mt, [[6, 2], [4, 1]], seed=0)
    assert len(sampled) == 4 and sampled[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in sampled[1:])
    assert common.context_templates(mt, [[6, 2], [4, 1]], seed=0) == sampled
    # Without prefixes the averaged key is the prompt's own: the edit must then hit the prompt.
    hparams = rome.RomeHparams(layer=layer, context_template_lengths=[])
    moment = stats.SecondMoment(moment_of(mt, layer), {"dataset": "corpus"})
    method = evaluation.WeightEditMethod(rome.RomeEditor(mt, hparams, moment))
    assert method.editor.templates == ["{}"]
    case = evaluation.EvalCase(
        case_id=1,
        entity=REQUEST.subject,
        relation_id="P551",
        prompt=REQUEST.prompt,
        context="",
        attribute="",
        target_new="Oslo",
        target_new_id="Q1",
        target_true="Lisbon",
        target_true_id="Q2",
        rewrite_prompt=REQUEST.prompt,
    )
    before_weights = weights_of(mt)
    before = log_prob(mt, REQUEST.prompt, "Oslo")
    with method.applied(mt, case):
        after = log_prob(mt, REQUEST.prompt, "Oslo")
        changed = [
            n for n, p in mt.model.named_parameters() if not torch.equal(p, before_weights[n])
        ]
    assert changed == ["transformer.h.0.mlp.c_proj.weight"]
    assert after > before + 0.5
    assert_unchanged(mt, before_weights)


def test_targets_are_token_ids_after_the_prompt_without_bos(llama):
    tokenizer = llama.tokenizer
    prompt, target = "Mira Talovan lives in the city of", "Lisbon Honolulu"
    ids = common.target_token_ids(tokenizer, prompt, target)
    whole = tokenizer(f"{prompt} {target}", add_special_tokens=False).input_ids
    assert len(ids) > 1 and ids == whole[len(whole) - len(ids) :]
    assert tokenizer.bos_token_id not in ids
    # The first target token carries the word boundary: what follows the prompt, not a new text.
    assert tokenizer.convert_ids_to_tokens(ids[0]).startswith("\u2581")
    batch = common.edit_batch(tokenizer, [prompt], "Mira Talovan", [ids])
    row = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert row[0] == tokenizer.bos_token_id
    assert row[-(len(ids) - 1) :] == ids[:-1]
    assert tokenizer.decode(row[: batch.subject_positions[0] + 1], skip_special_tokens=True) == (
        "Mira Talovan"
    )
    labels = batch.labels[0][batch.target_mask[0]].tolist()
    assert labels == ids


def test_rome_writes_a_multi_token_target_into_llama(llama):
    target = "Lisbon Honolulu"
    request = common.EditRequest(REQUEST.prompt, REQUEST.subject, target)
    hparams = rome.RomeHparams(layer=1, v_num_grad_steps=25)
    new = rome.edit(llama, request, hparams, moment_of(llama, 1), TEMPLATES)
    (name,) = new
    assert name == "model.layers.1.mlp.down_proj.weight"
    weight = llama.model.get_parameter(name)
    before = log_prob(llama, request.prompt, target)
    original = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(new[name])
    try:
        after = log_prob(llama, request.prompt, target)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert after > before + 0.5


def test_bad_input_raises_clearly_and_leaves_the_weights(mt):
    before = weights_of(mt)
    with pytest.raises(errors.SampleError, match="does not occur in prompt"):
        common.EditRequest("Someone lives in", "Mira Talovan", "Oslo")
    with pytest.raises(errors.UsageError, match="out of range"):
        rome.compute_update(mt, REQUEST, rome.RomeHparams(layer=2), None, TEMPLATES)
    with pytest.raises(errors.UsageError, match="out of range"):
        ft.edit(mt, REQUEST, ft.FtHparams(layers=[1, 2]))
    # A failure in the middle of the optimisation leaves no hook and no changed weight.
    broken = rome.RomeHparams(
        layer=0, v_lr=1e30, clamp_norm_factor=float("inf"), mom2_adjustment=False
    )
    with pytest.raises(errors.RemediError, match="lower v_lr"):
        rome.compute_update(mt, REQUEST, broken, None, TEMPLATES)
    assert_unchanged(mt, before)


def test_an_unloadable_statistics_corpus_names_the_flag(mt, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(errors.UsageError, match="--stats-dataset") as raised:
        stats.second_moment(mt, 0, corpora.open_corpus("no-such-user/no-such-dataset-xyz"), 10)
    assert "wikipedia:20200501.en" in str(raised.value)  # the reference's corpus, named
    with pytest.raises(errors.UsageError, match="--stats-dataset"):
        corpora.open_corpus("toy", mt.name)  # the toy corpus needs a toy world's model


def test_statistics_are_cached_with_metadata_and_refused_for_another_model(mt, tmp_path):
    first = stats.second_moment(mt, 1, TEXTS, len(CORPUS), tmp_path)
    meta = first.metadata
    assert (meta["model"], meta["layer"], meta["dataset"]) == ("tiny-gpt2", "1", TEXTS.key)
    assert meta["corpus"] == "corpus"
    assert int(meta["tokens"]) > 128 and meta["dtype"] == "float32"
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    # Read back without computing (the texts cannot be read).
    again = stats.second_moment(mt, 1, cached_only(TEXTS), len(CORPUS), tmp_path)
    assert torch.equal(again.moment, first.moment)
    other = models.ModelAndTokenizer(tiny_gpt2(mt.tokenizer), mt.tokenizer, "tiny-gpt2")
    with pytest.raises(errors.MismatchError, match="another model"):
        stats.second_moment(other, 1, cached_only(TEXTS), len(CORPUS), tmp_path)


def test_statistics_resume_after_an_interruption(mt, tmp_path, monkeypatch):
    whole = stats.second_moment(mt, 0, TEXTS, len(CORPUS), chunk_texts=2)
    monkeypatch.setattr(stats, "SAVE_EVERY_CHUNKS", 1)
    add_chunk = interrupt_statistics(monkeypatch, at_chunk=4)
    with pytest.raises(KeyboardInterrupt):
        stats.second_moment(mt, 0, TEXTS, len(CORPUS), tmp_path, chunk_texts=2)
    assert len(list(tmp_path.rglob("*.partial.safetensors"))) == 1
    monkeypatch.setattr(stats, "_add_chunk", add_chunk)
    resumed = stats.second_moment(mt, 0, TEXTS, len(CORPUS), tmp_path, chunk_texts=2)
    # Same chunks summed in the same order in float64: equal to the uninterrupted run.
    assert torch.equal(resumed.moment, whole.moment)
    assert resumed.metadata["tokens"] == whole.metadata["tokens"]
    assert not list(tmp_path.rglob("*.partial.safetensors"))


def test_ft_trains_weight_and_bias_of_its_layers_each_within_the_norm_constraint(mt):
    # As kmeng01/rome's FT (baselines/ft/ft_main.py:71-76, 128-134): every parameter of the
    # projection, bias included, is trained and clamped to its own L-infinity ball.
    before = weights_of(mt)
    bound = 2e-2
    hparams = ft.FtHparams(layers=[0, 1], lr=1e-2, norm_constraint=bound, kl_factor=0.1)
    new = ft.edit(mt, REQUEST, hparams)
    assert sorted(new) == [
        "transformer.h.0.mlp.c_proj.bias",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.1.mlp.c_proj.bias",
        "transformer.h.1.mlp.c_proj.weight",
    ]
    for name, value in new.items():
        change = (value - before[name]).abs()
        assert 0 < change.max().item() <= bound + 1e-6, name
        # lr 1e-2 for 25 steps would move entries well past the bound: the clamp is what holds.
        assert (change > 0.9 * bound).any(), name
    assert_unchanged(mt, before)
    original = log_prob(mt, REQUEST.prompt, "Oslo")
    with base.weights_applied(mt.model, new, "FT"):
        edited = log_prob(mt, REQUEST.prompt, "Oslo")
        assert not torch.equal(
            mt.model.get_parameter("transformer.h.0.mlp.c_proj.bias"),
            before["transformer.h.0.mlp.c_proj.bias"],
        )
    assert edited > original + 0.5
    # The bias is restored bit-identically with the weights.
    assert_unchanged(mt, before)


def test_ft_trains_the_weight_alone_without_train_bias(mt):
    before = weights_of(mt)
    hparams = ft.FtHparams(layers=[0], lr=1e-2, norm_constraint=2e-2, train_bias=False)
    new = ft.edit(mt, REQUEST, hparams)
    assert sorted(new) == ["transformer.h.0.mlp.c_proj.weight"]
    assert_unchanged(mt, before)


def test_packaged_ft_hparams_are_the_references():
    from remedi.methods import hparams_file

    # kmeng01/rome hparams/FT/EleutherAI_gpt-j-6B_constr.json and gpt2-xl_constr.json.
    for method in ("ft", "ft5"):
        gptj = ft.FtHparams.from_file(hparams_file(method, "gptj"))
        gpt2_xl = ft.FtHparams.from_file(hparams_file(method, "gpt2-xl"))
        assert (gptj.norm_constraint, gptj.lr, gptj.train_bias) == (5e-5, 5e-4, True)
        assert (gpt2_xl.norm_constraint, gpt2_xl.lr, gpt2_xl.train_bias) == (5e-4, 5e-4, True)
        # The toy's tables were measured training the weight alone.
        assert not ft.FtHparams.from_file(hparams_file(method, "toy")).train_bias


def test_weight_methods_are_registered_and_built_with_cached_statistics(mt, tmp_path):
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    cases = evaluation.counterfact_cases(records)
    resources = evaluation.EvalResources()
    hparams = rome.RomeHparams(
        layer=0, context_template_lengths=[], stats_dataset=corpus_file(tmp_path)
    )
    corpus = corpora.open_corpus(hparams.stats_dataset)
    stats.second_moment(mt, 0, corpus, hparams.stats_num_texts, tmp_path / "stats")
    cached = file_times(tmp_path / "stats")
    method = evaluation.build_method(
        "rome", mt, cases, resources, hparams=hparams, stats_dir=tmp_path / "stats"
    )
    assert isinstance(method, evaluation.WeightEditMethod)
    assert isinstance(method.editor, rome.RomeEditor)
    assert method.details()["stats_dataset"] == corpus.key
    # The method opened the same corpus by its spec and read the cache, not a new computation.
    assert file_times(tmp_path / "stats") == cached
    for name, layers in (("ft", [0]), ("ft5", [0, 1])):
        built = evaluation.build_method(
            name, mt, cases, resources, hparams=ft.FtHparams(layers=layers)
        )
        assert built.name == name and built.edits_weights
    with pytest.raises(errors.UsageError, match="no rome hyperparameters"):
        evaluation.build_method("rome", mt, cases, resources)
    assert_raises_new_targets_and_restores(mt, method, cases)


def test_packaged_hparams_are_found_by_alias_or_hub_name():
    from remedi.methods import hparams_file

    assert hparams_file("rome", "gptj") == hparams_file("rome", "EleutherAI/gpt-j-6B")
    assert rome.RomeHparams.from_file(hparams_file("rome", "gpt2-xl")).layer == 17
    assert rome.RomeHparams.from_file(hparams_file("rome", "toy+random123456")).layer == 0
    assert ft.FtHparams.from_file(hparams_file("ft5", "gpt2-xl")).layers == [0, 1, 2, 3, 4]
    with pytest.raises(errors.UsageError, match="no ft hyperparameters for model 'llama-7b'"):
        hparams_file("ft", "llama-7b")


def test_ft_reapplies_its_cached_weights_per_case(mt):
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    cases = evaluation.counterfact_cases(records)[:1]
    editor = ft.FtEditor("ft", ft.FtHparams(layers=[0], lr=1e-2))
    method = evaluation.WeightEditMethod(editor)
    first = method.new_weights(mt, cases[0])
    again = method.new_weights(mt, cases[0])
    assert list(method.updates) == [evaluation.edit_request(cases[0])]
    for name, value in first.items():
        assert torch.equal(again[name], value)
    uncached = evaluation.WeightEditMethod(editor, max_cached_bytes=0)
    uncached.new_weights(mt, cases[0])
    assert not uncached.updates


def interrupt_statistics(monkeypatch, at_chunk: int):
    """Make the statistics raise KeyboardInterrupt when they add chunk ``at_chunk`` (as a user's
    Ctrl-C would); returns the original ``stats._add_chunk`` to put back."""
    add_chunk = stats._add_chunk
    calls = {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == at_chunk:
            raise KeyboardInterrupt
        return add_chunk(*args, **kwargs)

    monkeypatch.setattr(stats, "_add_chunk", interrupted)
    return add_chunk


def key_gram(
    mt: models.ModelAndTokenizer, layer: int, texts: list[str], absolute: bool = False
) -> torch.Tensor:
    """``sum k k^T`` (or of ``|k|``) in float64 over the keys of ``layer``, one full forward
    pass per text: the reference the statistics are checked against."""
    projection = models.determine_mlp_output(mt.model, layer)
    gram = torch.zeros(projection.in_features, projection.in_features, dtype=torch.float64)
    for text in texts:
        inputs = mt.tokenizer(text, return_tensors="pt")
        with common.record_mlp_keys(mt.model, projection) as recorded:
            mt.model(**inputs)
        keys = recorded["keys"].input.reshape(-1, projection.in_features).double()
        keys = keys.abs() if absolute else keys
        gram += keys.T @ keys
    return gram


def test_key_statistics_equal_the_keys_of_a_full_forward_pass(mt64):
    # The statistics stop the forward after the layer; the keys must be those of the whole model.
    layer = 0
    expected = key_gram(mt64, layer, CORPUS)
    computed = stats.second_moment(mt64, layer, TEXTS, len(CORPUS), max_batch_tokens=64)
    count = int(computed.metadata["tokens"])
    # Summed in float64, stored as float32: equal to float32 rounding (eps 1.2e-7).
    torch.testing.assert_close(computed.moment.double() * count, expected, rtol=1e-6, atol=1e-6)
