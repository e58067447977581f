"""The editing loss, training an editor, and training runs on disk (tiny random GPT-2)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch

from remedi import editors, hooks, models, precompute, training
from remedi.models import ModelAndTokenizer
from tests.conftest import tiny_gpt2
from tests.model_fixtures import tiny_llama, tiny_model
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

FIXTURES = Path(__file__).parent / "fixtures"

SAMPLES = [
    {
        "id": f"counterfact/{index}",
        "entity": entity,
        "prompt": prompt,
        "context": f"{prompt} {new}",
        "attribute": f"{prompt} {new}".split(entity)[-1].strip(",-;: "),
        "target_mediated": new,
        "target_unmediated": true,
    }
    for index, (entity, prompt, new, true) in enumerate(
        [
            ("Kelo Vantri", "Kelo Vantri lives in the city of", "Lisbon", "Oslo"),
            ("Xavi Bornadel", "The famous singer Xavi Bornadel speaks", "Norwegian", "Spanish"),
            ("Mira Talovan", "Mira Talovan works as a", "singer", "doctor"),
            ("Danu Revik", "Danu Revik is a", "doctor", "painter"),
            ("Barack Obama", "Barack Obama was born in", "Paris", "Honolulu"),
            ("Eiffel Tower", "The Eiffel Tower is located in", "Oslo", "Paris"),
        ]
    )
]


@pytest.fixture()
def mt(gpt2_model, tokenizer) -> ModelAndTokenizer:
    return ModelAndTokenizer(model=gpt2_model, tokenizer=tokenizer, name="tiny-gpt2")


@pytest.fixture()
def inputs(mt) -> precompute.EditorInputs:
    return precompute.editor_inputs(mt, SAMPLES, layers=[0])


@pytest.fixture(scope="module")
def mt64(tokenizer) -> ModelAndTokenizer:
    """A tiny GPT-2 in float64, for checks that hold only in exact arithmetic. Its weights are
    larger than the shared fixture's (0.2 vs 0.02), so that an edit at the entity visibly moves
    the predictions of later tokens."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2).double().requires_grad_(False)
    return ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny-gpt2")


def _float64(inputs: precompute.EditorInputs) -> precompute.EditorInputs:
    """The same inputs with float64 hidden states (stored float32 values, converted exactly)."""
    hidden_fields = (
        "entity_last_hiddens",
        "entity_average_hiddens",
        "attribute_hiddens",
        "attribute_last_hiddens",
    )
    return dataclasses.replace(
        inputs,
        **{
            name: {layer: tensor.double() for layer, tensor in getattr(inputs, name).items()}
            for name in hidden_fields
        },
    )


@pytest.fixture()
def inputs64(mt64) -> precompute.EditorInputs:
    return _float64(precompute.editor_inputs(mt64, SAMPLES, layers=[0]))


def _random_linear(mt, layer: int = 0, seed: int = 0, std: float = 0.5) -> editors.Editor:
    torch.manual_seed(seed)
    editor = editors.new_editor("linear", mt, layer=layer)
    with torch.no_grad():
        editor.w.weight.normal_(std=std)
    return editor.to(models.determine_dtype(mt.model))


KL_ONLY = training.LossWeights(lam_m=None, lam_u=None, lam_kl=1.0)
DIRECTIONS = ["original||edited", "edited||original"]


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, written out here rather than taken from remedi."""
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def _expected_kl(logp_edit, logp_orig, direction: str) -> torch.Tensor:
    if direction == "original||edited":
        return _kl(logp_orig, logp_edit)
    return _kl(logp_edit, logp_orig)


def test_the_default_kl_direction_is_the_references():
    # The reference's kl_div(log_edit, log_orig, log_target=True) is KL(original || edited).
    assert training.LossWeights().kl_direction == "original||edited"
    assert training.RunArgs(name="run", model="gpt2").loss_weights().kl_direction == (
        "original||edited"
    )
    with pytest.raises(ValueError, match="unknown KL direction 'edited->original'"):
        training.LossWeights(kl_direction="edited->original")
    with pytest.raises(ValueError, match="--kl-direction"):
        training.RunArgs(name="run", model="gpt2", kl_direction="forward")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_kl_of_a_batch_is_the_sum_of_per_example_kls_over_the_batch_size(mt64, inputs64, direction):
    editor = _random_linear(mt64)
    weights = dataclasses.replace(KL_ONLY, kl_direction=direction)
    with torch.no_grad():
        _, batch_terms = training.editing_loss(mt64, editor, inputs64, weights)
        singles = [
            training.editing_loss(mt64, editor, inputs64.select([index]), weights)[1]["kl"]
            for index in range(len(inputs64))
        ]
    assert all(kl > 1e-4 for kl in singles)
    # Padding and batching change the result by rounding only.
    assert_equal_in_exact_arithmetic(
        batch_terms["kl"], sum(singles) / len(inputs64), precision_of(mt64)
    )
    # Not just the last example's KL (the reference's bug).
    assert batch_terms["kl"] != pytest.approx(singles[-1] / len(inputs64), rel=1e-3)


def test_the_default_lam_kl_weighs_the_kl_as_the_reference_does_in_expectation(mt64, inputs64):
    # The reference (evandez/REMEDI remedi/editors.py:389-400) weighs only a batch's last sample's
    # KL, by lam_kl 10 / batch 16. Averaged over which of the 16 rows is last, that is our
    # batch-mean term at the default lam_kl exactly; with the old default (10) ours was 16 times it.
    assert training.DEFAULT_BATCH_SIZE == training.REFERENCE_BATCH_SIZE == 16
    assert training.DEFAULT_LAM_KL == training.reference_equivalent_lam_kl(10.0, 16) == 0.625
    rows = [index % len(inputs64) for index in range(training.REFERENCE_BATCH_SIZE)]
    batch = inputs64.select(rows)
    editor = _random_linear(mt64)
    with torch.no_grad():
        ours, _ = training.editing_loss(
            mt64, editor, batch, dataclasses.replace(KL_ONLY, lam_kl=training.DEFAULT_LAM_KL)
        )
        kl_of_sample = [
            training.editing_loss(mt64, editor, inputs64.select([index]), KL_ONLY)[1]["kl"]
            for index in range(len(inputs64))
        ]
    reference_if_last = [training.REFERENCE_LAM_KL * kl_of_sample[row] / len(rows) for row in rows]
    assert max(reference_if_last) > 1.5 * min(reference_if_last)  # the samples' KLs differ
    assert_equal_in_exact_arithmetic(ours, sum(reference_if_last) / len(rows), precision_of(mt64))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_kl_compares_edited_and_original_from_the_last_entity_token(mt64, inputs64, direction):
    editor = _random_linear(mt64)
    sample = inputs64.select([1])
    weights = dataclasses.replace(KL_ONLY, kl_direction=direction)
    with torch.no_grad():
        _, terms = training.editing_loss(mt64, editor, sample, weights)
        directions = editors.directions_from_inputs(editor, sample)
        prompt, entity = sample.prompts[0], sample.entities[0]
        with editors.apply_editor(mt64, editor, directions, [prompt], [entity]) as encoded:
            logp_edit = torch.log_softmax(mt64.model(**encoded).logits[0], dim=-1)
        logp_orig = torch.log_softmax(mt64.model(**encoded).logits[0], dim=-1)
    assert logp_edit.dtype == torch.float64
    start = int(sample.entity_token_ranges[0, 1]) - 1
    end = int(sample.prompt_lengths[0]) - 1
    assert end - start >= 2
    expected = _expected_kl(logp_edit, logp_orig, direction)[start:end].sum()
    # Only summation order differs.
    assert_equal_in_exact_arithmetic(terms["kl"], expected, precision_of(mt64))
    other = DIRECTIONS[1 - DIRECTIONS.index(direction)]
    reverse = _expected_kl(logp_edit, logp_orig, other)[start:end].sum()
    assert terms["kl"] != pytest.approx(reverse.item(), rel=1e-3)


def test_target_terms_read_the_last_prompt_token(mt64, inputs64):
    editor = _random_linear(mt64)
    weights = training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=None)
    with torch.no_grad():
        loss, terms = training.editing_loss(mt64, editor, inputs64, weights)
        directions = editors.directions_from_inputs(editor, inputs64)
        logp = []
        for index in range(len(inputs64)):  # one at a time: no padding involved
            with editors.apply_editor(
                mt64,
                editor,
                directions[index : index + 1],
                inputs64.prompts[index : index + 1],
                inputs64.entities[index : index + 1],
            ) as encoded:
                logp.append(torch.log_softmax(mt64.model(**encoded).logits[0, -1], dim=-1))
        logp = torch.stack(logp)
    rows = torch.arange(len(inputs64))
    mediated = -logp[rows, inputs64.target_mediated_ids].mean()
    unmediated = -torch.log(1 - logp[rows, inputs64.target_unmediated_ids].exp()).mean()
    # The padded batch and the single prompts differ by rounding only.
    precision = precision_of(mt64)
    assert_equal_in_exact_arithmetic(terms["mediated"], mediated, precision)
    assert_equal_in_exact_arithmetic(terms["unmediated"], unmediated, precision)
    assert_equal_in_exact_arithmetic(loss, mediated + unmediated, precision)


def test_the_norm_term_adds_lam_norm_times_the_mean_direction_norm(mt64, inputs64):
    editor = _random_linear(mt64)
    base = training.LossWeights()
    lam_norm = 0.7
    with torch.no_grad():
        loss_without, _ = training.editing_loss(mt64, editor, inputs64, base)
        loss_with, terms = training.editing_loss(
            mt64, editor, inputs64, dataclasses.replace(base, lam_norm=lam_norm)
        )
    # The editor's directions, by hand: W a + b on the attribute's mean hidden state.
    attribute = inputs64.attribute_hiddens[0]
    directions = attribute @ editor.w.weight.detach().T + editor.w.bias.detach()
    expected = directions.norm(dim=-1).mean().item()
    assert expected > 0.1
    # Only summation order differs; the difference of two losses is judged on their scale.
    precision = precision_of(mt64)
    assert_equal_in_exact_arithmetic(terms["norm"], expected, precision)
    assert_equal_in_exact_arithmetic(
        loss_with - loss_without, lam_norm * expected, precision, scale=loss_with.item()
    )


def _essence_logprobs(mt, prompt: str, entity: str, direction: torch.Tensor | None, layer: int):
    """Next-token log-probabilities after ``prompt`` (alone, unpadded), with ``direction`` added
    to the entity's last token at ``layer`` by a hook written here."""
    prompt_ids = mt.tokenizer(prompt)["input_ids"]
    entity_ids = mt.tokenizer(entity)["input_ids"]
    # The essence prompt starts with the entity, so its first tokens are the entity's.
    assert prompt_ids[: len(entity_ids)] == entity_ids
    last_entity = len(entity_ids) - 1

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, last_entity] += direction
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    block = mt.model.transformer.h[layer]
    handle = block.register_forward_hook(add) if direction is not None else None
    try:
        logits = mt.model(torch.tensor([prompt_ids])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_essence_term_adds_lam_ess_times_the_essence_kl(mt64, inputs64, direction):
    editor = _random_linear(mt64)
    base = training.LossWeights(kl_direction=direction)
    lam_ess = 0.7
    with torch.no_grad():
        loss_without, _ = training.editing_loss(mt64, editor, inputs64, base)
        loss_with, terms = training.editing_loss(
            mt64, editor, inputs64, dataclasses.replace(base, lam_ess=lam_ess)
        )
        directions = editors.directions_from_inputs(editor, inputs64)
        kls = []
        for entity, edit in zip(inputs64.entities, directions, strict=True):
            prompt = f"{entity} is a"
            logp_edit = _essence_logprobs(mt64, prompt, entity, edit, editor.layer)
            logp_orig = _essence_logprobs(mt64, prompt, entity, None, editor.layer)
            kls.append(_expected_kl(logp_edit, logp_orig, direction))
    expected = torch.stack(kls).mean().item()
    assert expected > 1e-4
    # The padded batch and the single prompts differ by rounding only; the difference of two
    # losses is judged on their scale.
    precision = precision_of(mt64)
    assert_equal_in_exact_arithmetic(terms["essence"], expected, precision)
    assert_equal_in_exact_arithmetic(
        loss_with - loss_without, lam_ess * expected, precision, scale=loss_with.item()
    )


def test_log1m_exp_is_finite_at_certainty():
    assert torch.isfinite(training.log1m_exp(torch.tensor([0.0, -1e-9]))).all()
    # Two float32 formulas for the same number: the default float32 tolerance (a few ulps).
    torch.testing.assert_close(
        training.log1m_exp(torch.log(torch.tensor([0.25]))), torch.log(torch.tensor([0.75]))
    )


@pytest.fixture()
def responsive_mt(tokenizer) -> ModelAndTokenizer:
    """A fresh tiny GPT-2 whose predictions respond to an edit (weights at 0.2, not 0.02): an
    editor trained on it lowers the loss by a margin far above float32 rounding."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2)
    return ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny-gpt2")


def test_training_moves_only_the_editor_and_lowers_its_loss(responsive_mt):
    mt = responsive_mt
    inputs = precompute.editor_inputs(mt, SAMPLES, layers=[0])
    train, val = inputs.select([0, 1, 2, 3]), inputs.select([4, 5])
    model = mt.model
    model.requires_grad_(True)  # even a model that was not frozen must not change
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    torch.manual_seed(0)
    editor = editors.new_editor("linear", mt, layer=0)
    editor_before = {name: tensor.clone() for name, tensor in editor.state_dict().items()}
    # The loss weights the numbers below were measured with (lam_kl 10, the default until it was
    # rescaled to the reference's weight).
    weights = training.LossWeights(lam_kl=10.0)
    config = training.TrainingConfig(
        max_epochs=3, batch_size=2, lr=1e-2, patience=3, weights=weights
    )
    with training.frozen(model):
        untrained_loss = training.fit._mean_loss(mt, editor, train, config, "before")

    log = training.train_editor(mt, editor, train, val, config)

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())  # restored
    assert not torch.equal(editor.state_dict()["w.weight"], editor_before["w.weight"])
    assert [epoch.epoch for epoch in log.epochs] == [0, 1, 2, 3]
    assert log.epochs[0].train_loss is None
    # The training loss falls every epoch (measured 7.44, 7.22, 7.17 for this seed; falls of
    # 0.04 to 0.5 per epoch over seeds 0-4), and the kept editor's loss on the training samples
    # is below the untrained editor's (ratio 0.89-0.96 over seeds 0-4).
    train_losses = [epoch.train_loss for epoch in log.epochs[1:]]
    assert all(later < earlier for earlier, later in itertools.pairwise(train_losses))
    with training.frozen(model):
        trained_loss = training.fit._mean_loss(mt, editor, train, config, "after")
    assert trained_loss < 0.98 * untrained_loss


def test_training_keeps_the_best_state_and_stops_early(mt, inputs):
    torch.manual_seed(0)
    editor = editors.new_editor("linear", mt, layer=0)
    # A learning rate this large overshoots: validation loss gets worse and training stops.
    config = training.TrainingConfig(max_epochs=20, batch_size=2, lr=3.0, patience=2)
    train, val = inputs.select([0, 1, 2, 3]), inputs.select([4, 5])
    log = training.train_editor(mt, editor, train, val, config)

    assert log.stopped_early
    assert len(log.epochs) == log.best_epoch + config.patience + 1
    assert log.best_val_loss == min(epoch.val_loss for epoch in log.epochs)
    assert log.epochs[-1].val_loss > log.best_val_loss
    with training.frozen(mt.model):
        kept = training.fit._mean_loss(mt, editor, val, config, "check")
    # Exact: the restored state, on the same batches, repeats the same float computation.
    assert kept == log.best_val_loss


def test_baseline_editors_train_without_updates(mt, inputs):
    config = training.TrainingConfig(max_epochs=2, batch_size=3)
    train = inputs.select([0, 1, 2])
    random_editor = editors.new_editor("random", mt, layer=0)
    log = training.train_editor(mt, random_editor, train, inputs.select([3]), config)
    assert len(log.epochs) == 1
    # The same batches as the fit: the same float32 deltas, whose mean the editor takes in
    # float64 and stores in float32. Exact.
    deltas = training.entity_deltas(mt, train, layer=0, batch_size=config.batch_size)
    assert deltas.abs().max() > 0
    expected_mean = deltas.double().mean(dim=0).to(random_editor.mean.dtype)
    assert torch.equal(random_editor.mean, expected_mean)
    null_log = training.train_editor(
        mt, editors.new_editor("null", mt, 0), train, inputs.select([3, 4, 5]), config
    )
    assert null_log.val_efficacy == null_log.val_efficacy_unedited


# ---------------------------------------------------------------------------------------
# Runs on disk.


@pytest.fixture()
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "results"


def _run_args(**changes) -> training.RunArgs:
    args = training.RunArgs(
        name="tiny_run",
        model="tiny-gpt2",
        dataset="counterfact",
        dataset_file=str(FIXTURES / "counterfact_sample.json"),
        layers=[0],
        max_epochs=1,
        batch_size=2,
        test_size=0.25,
        hold_out=0.34,
        seed=0,
    )
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def test_a_run_saves_its_arguments_split_and_editors(mt, results):
    directory = training.train_run(_run_args(layers=[0, 1], seed=1), mt=mt)

    assert directory == results / "tiny_run"
    record = training.load_run(directory)
    assert record.args.layers == [0, 1]
    assert record.seed == 1
    assert record.hidden_size == 32
    split = record.split
    assert len(split.train) + len(split.validation) + len(split.test) == 4
    assert split.test and split.validation and split.train
    assert not set(split.train) & set(split.test)
    raw = json.loads((directory / "args.json").read_text())
    assert raw["args"]["lam_kl"] == training.DEFAULT_LAM_KL == 0.625
    assert raw["args"]["kl_direction"] == "original||edited"
    assert raw["split"]["test"] == split.test

    for layer in (0, 1):
        layer_dir = directory / "linear" / str(layer)
        assert sorted(path.name for path in layer_dir.iterdir()) == [
            "config.json",
            "train_log.json",
            "weights.safetensors",
        ]
        log = json.loads((layer_dir / "train_log.json").read_text())
        assert [epoch["epoch"] for epoch in log["epochs"]] == [0, 1]
        assert log["epochs"][1]["train_loss"] is not None
        assert log["config"]["weights"]["lam_u"] == 1.0  # CounterFact turns lam_u on
        assert log["config"]["weights"]["kl_direction"] == "original||edited"
    assert training.list_run_editors(directory) == {"linear": [0, 1]}
    editor = training.load_run_editor(directory, layer=1, mt=mt)
    assert editor.layer == 1
    test_samples = training.load_run_samples(directory, "test")
    assert test_samples["id"] == split.test
    train_entities = set(training.load_run_samples(directory, "train")["entity"])
    assert not train_entities & set(test_samples["entity"])
    with pytest.raises(FileNotFoundError, match="no finished mlp editor"):
        training.load_run_editor(directory, layer=0, editor_type="mlp")


def test_args_written_before_kl_direction_load_as_they_were_trained(mt, results):
    directory = training.train_run(_run_args(kl_direction="edited||original"), mt=mt)
    path = directory / "args.json"
    raw = json.loads(path.read_text())
    del raw["args"]["kl_direction"]
    path.write_text(json.dumps(raw))
    # Such a run was trained with the default of its time, KL(edited || original) ...
    assert training.load_run(directory).args.kl_direction == "edited||original"
    # ... so adding editors to it with today's default is refused, not mixed.
    with pytest.raises(ValueError, match="kl_direction"):
        training.train_run(_run_args(layers=[0, 1]), mt=mt)


def test_a_rerun_skips_finished_editors_and_resumes_unfinished_ones(mt, results):
    directory = training.train_run(_run_args(layers=[0]), mt=mt)
    weights = directory / "linear" / "0" / "weights.safetensors"
    saved = weights.read_bytes()
    mtime = weights.stat().st_mtime_ns

    # Another layer is added; layer 0 is left alone.
    training.train_run(_run_args(layers=[0, 1]), mt=mt)
    assert weights.stat().st_mtime_ns == mtime
    assert training.list_run_editors(directory) == {"linear": [0, 1]}

    # A crash before the training log was written leaves the editor unfinished: it is redone.
    (directory / "linear" / "1" / "train_log.json").unlink()
    assert training.list_run_editors(directory) == {"linear": [0]}
    training.train_run(_run_args(layers=[0, 1]), mt=mt)
    assert training.list_run_editors(directory) == {"linear": [0, 1]}

    # --clear-results retrains (same seed: same weights).
    training.train_run(_run_args(layers=[0]), mt=mt, clear_results=True)
    assert weights.stat().st_mtime_ns != mtime
    assert weights.read_bytes() == saved
    assert training.list_run_editors(directory) == {"linear": [0]}


def test_an_interrupted_run_keeps_the_editors_it_finished(mt, results, monkeypatch):
    calls = []
    original = training.train_editor

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training.runs, "train_editor", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        training.train_run(_run_args(layers=[0, 1]), mt=mt)
    directory = results / "tiny_run"
    assert training.list_run_editors(directory) == {"linear": [0]}
    assert not (directory / "linear" / "1" / "config.json").exists()


def test_a_rerun_with_other_settings_is_refused(mt, results):
    training.train_run(_run_args(), mt=mt)
    with pytest.raises(ValueError, match="lam_kl") as error:
        training.train_run(_run_args(lam_kl=1.0), mt=mt)
    assert "--clear-results" in str(error.value)
    training.train_run(_run_args(lam_kl=1.0), mt=mt, clear_results=True)
    assert training.load_run(results / "tiny_run").args.lam_kl == 1.0


def test_the_script_trains_from_the_command_line(gpt2_model, tokenizer, results, tmp_path, capsys):
    from scripts import train_editors

    model_dir = tmp_path / "tiny-model"
    gpt2_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = [
        "-n",
        "cli_run",
        "-m",
        str(model_dir),
        "-l",
        "1",
        "-t",
        "linear",
        "identity",
        "--max-epochs",
        "1",
        "--batch-size",
        "2",
        "--test-size",
        "0.25",
        "--hold-out",
        "0.34",
        "--dataset-file",
        str(FIXTURES / "counterfact_sample.json"),
        "--device",
        "cpu",
        "--kl-direction",
        "edited||original",
    ]
    assert train_editors.main(argv) == 0
    assert "editors saved under" in capsys.readouterr().out
    directory = results / "cli_run"
    assert training.list_run_editors(directory) == {"linear": [1], "identity": [1]}
    record = training.load_run(directory)
    assert record.args.editor_types == ["linear", "identity"]
    assert record.args.device == "cpu"
    assert record.args.kl_direction == "edited||original"
    train_log = json.loads((directory / "linear" / "1" / "train_log.json").read_text())
    assert train_log["config"]["weights"]["kl_direction"] == "edited||original"


# ---------------------------------------------------------------------------------------
# The fast loss (logits only where read, prompts of similar length together) is the definition.

LONG_SAMPLE = {
    **SAMPLES[0],
    "id": "counterfact/long",
    "prompt": "Everyone who has met him in the last ten years knows that Kelo Vantri lives in",
}
LONG_SUFFIX_SAMPLE = {
    **SAMPLES[2],
    "id": "counterfact/long-suffix",
    "prompt": "Mira Talovan, whom everyone in the old town has known for ten years, works as a",
}


def _block_edit_hook(start: int, end: int, direction: torch.Tensor):
    """A forward hook, written here, that adds ``direction`` at positions ``[start, end)`` of a
    single row."""

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edit = torch.zeros_like(hidden)
        edit[0, start:end] = direction
        return (hidden + edit, *output[1:]) if isinstance(output, tuple) else hidden + edit

    return add


def _plain_loss(mt, editor, inputs, weights) -> torch.Tensor:
    """The REMEDI loss by its definition: each prompt alone (no padding), every position's
    logits, the direction added by a hook written here."""
    directions = editors.directions_from_inputs(editor, inputs)
    block = models.resolve_layer(mt.model, editor.layer)
    mediated, unmediated, kls = [], [], []
    for index, prompt in enumerate(inputs.prompts):
        ids = torch.tensor([mt.tokenizer(prompt)["input_ids"]])
        first_entity, end_entity = inputs.entity_token_ranges[index].tolist()
        last_entity = end_entity - 1
        start = last_entity if editor.config.edit_last_entity_token else first_entity
        handle = block.register_forward_hook(_block_edit_hook(start, end_entity, directions[index]))
        try:
            logp_edit = torch.log_softmax(mt.model(ids).logits[0], dim=-1)
        finally:
            handle.remove()
        with torch.no_grad():
            logp_orig = torch.log_softmax(mt.model(ids).logits[0], dim=-1)
        mediated.append(-logp_edit[-1, inputs.target_mediated_ids[index]])
        unmediated.append(-torch.log1p(-logp_edit[-1, inputs.target_unmediated_ids[index]].exp()))
        kls.append(_kl(logp_orig, logp_edit)[last_entity : ids.shape[1] - 1].sum())
    return (
        weights.lam_m * torch.stack(mediated).mean()
        + weights.lam_u * torch.stack(unmediated).mean()
        + weights.lam_kl * torch.stack(kls).sum() / len(inputs)
    )


def _float64_model(tokenizer, model_type: str) -> ModelAndTokenizer:
    """A frozen float64 tiny model with weights at 0.2 (an edit moves later predictions)."""
    model = tiny_model(model_type, vocab_size=len(tokenizer), initializer_range=0.2)
    return ModelAndTokenizer(model.double().requires_grad_(False), tokenizer, f"tiny-{model_type}")


def _assert_loss_is_the_definition(
    mt: ModelAndTokenizer, editor, inputs, *, gradients_nonzero: bool
) -> None:
    """The fast loss and its gradient equal :func:`_plain_loss`'s up to rounding, with a KL term
    that counts; ``gradients_nonzero``: every parameter's expected gradient is non-zero too."""
    weights = training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=10.0)

    loss, terms = training.editing_loss(mt, editor, inputs, weights)
    gradients = torch.autograd.grad(loss, list(editor.parameters()))
    expected = _plain_loss(mt, editor, inputs, weights)
    expected_gradients = torch.autograd.grad(expected, list(editor.parameters()))

    assert terms["kl"] > 1e-4
    precision = precision_of(mt)
    assert_equal_in_exact_arithmetic(loss, expected, precision)
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        if gradients_nonzero:
            assert expected_gradient.abs().max() > 1e-6
        assert_equal_in_exact_arithmetic(gradient, expected_gradient, precision)


@pytest.mark.parametrize(
    "model_type", [*sorted(training.loss.PREFIX_CACHE_FAMILIES), "bloom", "gemma2"]
)
def test_the_loss_and_its_gradient_are_the_definitions(tokenizer, model_type: str):
    # float64 weights at 0.2 (an edit moves later predictions): the fast loss and the plain one
    # below differ by rounding only, of float32 for families that compute parts in float32.
    mt = _float64_model(tokenizer, model_type)
    samples = [*SAMPLES, LONG_SAMPLE, LONG_SUFFIX_SAMPLE]
    inputs = _float64(precompute.editor_inputs(mt, samples, layers=[1]))
    # Prompts aligned on entities at different positions, in two forward passes.
    first_edited = inputs.entity_token_ranges[:, 1] - 1
    assert len(set(first_edited.tolist())) > 2
    assert len(training.length_groups(inputs.prompt_lengths - first_edited)) == 2
    editor = _random_linear(mt, layer=1)
    _assert_loss_is_the_definition(mt, editor, inputs, gradients_nonzero=True)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_the_loss_is_the_definition_when_every_entity_token_is_edited(tokenizer, model_type):
    # The edited pass then starts at the entity's first token. Rounding only, as above.
    mt = _float64_model(tokenizer, model_type)
    inputs = _float64(precompute.editor_inputs(mt, [*SAMPLES, LONG_SAMPLE], layers=[1]))
    assert (inputs.entity_token_ranges[:, 1] - inputs.entity_token_ranges[:, 0] > 1).any()
    torch.manual_seed(0)
    editor = editors.new_editor("linear", mt, layer=1, edit_last_entity_token=False).double()
    with torch.no_grad():
        editor.w.weight.normal_(std=0.5)
    _assert_loss_is_the_definition(mt, editor, inputs, gradients_nonzero=False)


def test_length_groups_split_only_where_padding_is_saved():
    groups = training.length_groups(torch.tensor([9, 3, 3, 10, 4, 3]))
    assert [group.tolist() for group in groups] == [[1, 2, 5, 4], [0, 3]]
    # 22 tokens in two passes instead of 24 in one: not worth a second pass.
    assert [g.tolist() for g in training.length_groups(torch.tensor([5, 6, 6, 5]))] == [
        [0, 3, 1, 2]
    ]
    assert [g.tolist() for g in training.length_groups(torch.tensor([7]))] == [[0]]


# ---------------------------------------------------------------------------------------
# A SentencePiece/Llama-style tokenizer that adds BOS.


def test_the_loss_reads_the_right_tokens_when_the_tokenizer_adds_bos(llama_tokenizer):
    # float64 weights at 0.2 (an edit at the entity moves later predictions): the padded batch
    # and the single prompts below then differ by rounding only (Llama's float32 RMSNorm's).
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).double()
    mt = ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")
    inputs = _float64(precompute.editor_inputs(mt, SAMPLES, layers=[1]))
    bos = llama_tokenizer.bos_token_id
    assert bos not in inputs.target_mediated_ids.tolist()
    editor = _random_linear(mt, layer=1)
    weights = training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=1.0)
    with torch.no_grad():
        loss, terms = training.editing_loss(mt, editor, inputs, weights)
        directions = editors.directions_from_inputs(editor, inputs)
        mediated, unmediated, kls = [], [], []
        for index, (prompt, entity) in enumerate(zip(inputs.prompts, inputs.entities, strict=True)):
            ids = llama_tokenizer(prompt)["input_ids"]
            assert ids[0] == bos
            # The entity's last token, found here from the ids: Metaspace pieces ("▁Xavi")
            # are the same mid-sentence as at the start, so the entity's own ids (after its BOS)
            # occur in the prompt's.
            entity_ids = llama_tokenizer(entity)["input_ids"][1:]
            last_entity = max(
                start + len(entity_ids) - 1
                for start in range(1, len(ids) - len(entity_ids) + 1)
                if ids[start : start + len(entity_ids)] == entity_ids
            )
            encoded = torch.tensor([ids])
            with hooks.add_directions(
                mt.model,
                1,
                directions[index : index + 1],
                torch.tensor([[last_entity, last_entity + 1]]),
            ):
                logp_edit = torch.log_softmax(mt.model(encoded).logits[0], dim=-1)
            logp_orig = torch.log_softmax(mt.model(encoded).logits[0], dim=-1)
            mediated.append(-logp_edit[-1, inputs.target_mediated_ids[index]])
            unmediated.append(
                -torch.log1p(-logp_edit[-1, inputs.target_unmediated_ids[index]].exp())
            )
            # Default direction: KL(original || edited), from the entity's last token to the one
            # before the last.
            kls.append(_kl(logp_orig, logp_edit)[last_entity : len(ids) - 1].sum())
    precision = precision_of(mt)
    assert_equal_in_exact_arithmetic(terms["mediated"], torch.stack(mediated).mean(), precision)
    assert_equal_in_exact_arithmetic(terms["unmediated"], torch.stack(unmediated).mean(), precision)
    assert terms["kl"] > 1e-4
    assert_equal_in_exact_arithmetic(terms["kl"], torch.stack(kls).mean(), precision)
    assert loss.item() == pytest.approx(terms["mediated"] + terms["unmediated"] + terms["kl"])


def test_random_control_editors_belong_to_the_random_model(
    gpt2_model, tokenizer, results, tmp_path
):
    from scripts import train_editors

    model_dir = tmp_path / "tiny-model"
    gpt2_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = ["-n", "random_run", "-m", str(model_dir), "-l", "0", "--random", "--device", "cpu"]
    argv += ["--max-epochs", "1", "--batch-size", "2", "--test-size", "0.25", "--hold-out", "0.34"]
    argv += ["--dataset-file", str(FIXTURES / "counterfact_sample.json")]
    args = train_editors.run_args(train_editors.parse_args(argv))
    assert args.random_init
    directory = training.train_run(args)
    assert training.load_run(directory).args.random_init
    random_name = models.random_model_name(str(model_dir))
    assert editors.read_editor_config(directory / "linear" / "0").model_name == random_name
    # The editor edits the random model's representations: it refuses the trained model.
    with pytest.raises(ValueError, match="random"):
        training.load_run_editor(directory, 0, mt=models.load_model(str(model_dir)))
    editor = training.load_run_editor(
        directory, 0, mt=models.load_model(str(model_dir), random_init=True)
    )
    assert editor.layer == 0
