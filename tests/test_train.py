"""The editing loss, training an editor, and training runs on disk (tiny random GPT-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from remedi import editors, precompute, training
from remedi.models import ModelAndTokenizer

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


def _random_linear(mt, layer: int = 0, seed: int = 0) -> editors.Editor:
    torch.manual_seed(seed)
    editor = editors.new_editor("linear", mt, layer=layer)
    with torch.no_grad():
        editor.w.weight.normal_(std=0.5)
    return editor


KL_ONLY = training.LossWeights(lam_m=None, lam_u=None, lam_kl=1.0)


def test_kl_of_a_batch_is_the_sum_of_per_example_kls_over_the_batch_size(mt, inputs):
    editor = _random_linear(mt)
    with torch.no_grad():
        _, batch_terms = training.editing_loss(mt, editor, inputs, KL_ONLY)
        singles = [
            training.editing_loss(mt, editor, inputs.select([index]), KL_ONLY)[1]["kl"]
            for index in range(len(inputs))
        ]
    assert all(kl > 0 for kl in singles)
    assert batch_terms["kl"] == pytest.approx(sum(singles) / len(inputs), rel=1e-5)
    # Not just the last example's KL (the reference's bug).
    assert batch_terms["kl"] != pytest.approx(singles[-1] / len(inputs), rel=1e-3)


def test_kl_is_edited_against_original_from_the_last_entity_token(mt, inputs):
    editor = _random_linear(mt)
    sample = inputs.select([1])
    with torch.no_grad():
        _, terms = training.editing_loss(mt, editor, sample, KL_ONLY)
        directions = editors.directions_from_inputs(editor, sample)
        prompt, entity = sample.prompts[0], sample.entities[0]
        with editors.apply_editor(mt, editor, directions, [prompt], [entity]) as encoded:
            logp_edit = torch.log_softmax(mt.model(**encoded).logits[0], dim=-1)
        logp_orig = torch.log_softmax(mt.model(**encoded).logits[0], dim=-1)
    start = int(sample.entity_token_ranges[0, 1]) - 1
    end = int(sample.prompt_lengths[0]) - 1
    p_edit = logp_edit.exp()
    expected = (p_edit * (logp_edit - logp_orig)).sum(dim=-1)[start:end].sum()
    assert terms["kl"] == pytest.approx(expected.item(), rel=1e-5)
    reverse = (logp_orig.exp() * (logp_orig - logp_edit)).sum(dim=-1)[start:end].sum()
    assert terms["kl"] != pytest.approx(reverse.item(), rel=1e-3)


def test_target_terms_read_the_last_prompt_token(mt, inputs):
    editor = _random_linear(mt)
    weights = training.LossWeights(lam_m=1.0, lam_u=1.0, lam_kl=None)
    with torch.no_grad():
        loss, terms = training.editing_loss(mt, editor, inputs, weights)
        directions = editors.directions_from_inputs(editor, inputs)
        logp = []
        for index in range(len(inputs)):  # one at a time: no padding involved
            with editors.apply_editor(
                mt,
                editor,
                directions[index : index + 1],
                inputs.prompts[index : index + 1],
                inputs.entities[index : index + 1],
            ) as encoded:
                logp.append(torch.log_softmax(mt.model(**encoded).logits[0, -1], dim=-1))
        logp = torch.stack(logp)
    rows = torch.arange(len(inputs))
    mediated = -logp[rows, inputs.target_mediated_ids].mean()
    unmediated = -torch.log(1 - logp[rows, inputs.target_unmediated_ids].exp()).mean()
    assert terms["mediated"] == pytest.approx(mediated.item(), rel=1e-4)
    assert terms["unmediated"] == pytest.approx(unmediated.item(), rel=1e-4)
    assert loss.item() == pytest.approx(mediated.item() + unmediated.item(), rel=1e-4)


def test_log1m_exp_is_finite_at_certainty():
    assert torch.isfinite(training.log1m_exp(torch.tensor([0.0, -1e-9]))).all()
    torch.testing.assert_close(
        training.log1m_exp(torch.log(torch.tensor([0.25]))), torch.log(torch.tensor([0.75]))
    )


def test_training_moves_only_the_editor(mt, inputs):
    model = mt.model
    model.requires_grad_(True)  # even a model that was not frozen must not change
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    editor = editors.new_editor("linear", mt, layer=0)
    editor_before = {name: tensor.clone() for name, tensor in editor.state_dict().items()}
    config = training.TrainingConfig(max_epochs=3, batch_size=2, lr=1e-2)

    log = training.train_editor(
        mt, editor, inputs.select([0, 1, 2, 3]), inputs.select([4, 5]), config
    )

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())  # restored
    assert not torch.equal(editor.state_dict()["w.weight"], editor_before["w.weight"])
    assert log.epochs[0].epoch == 0
    assert log.epochs[1].train_loss is not None
    assert log.epochs[-1].train_loss < log.epochs[1].train_loss * 1.5


def test_training_keeps_the_best_state_and_stops_early(mt, inputs):
    editor = editors.new_editor("linear", mt, layer=0)
    # A learning rate this large overshoots: validation loss gets worse and training stops.
    config = training.TrainingConfig(max_epochs=20, batch_size=2, lr=3.0, patience=2)
    train, val = inputs.select([0, 1, 2, 3]), inputs.select([4, 5])
    log = training.train_editor(mt, editor, train, val, config)

    assert log.stopped_early
    assert len(log.epochs) == log.best_epoch + config.patience + 1
    assert log.best_val_loss == min(epoch.val_loss for epoch in log.epochs)
    with training.frozen(mt.model):
        kept = training._mean_loss(mt, editor, val, config, "check")
    assert kept == pytest.approx(log.best_val_loss, rel=1e-5)


def test_baseline_editors_train_without_updates(mt, inputs):
    config = training.TrainingConfig(max_epochs=2, batch_size=3)
    random_editor = editors.new_editor("random", mt, layer=0)
    log = training.train_editor(
        mt, random_editor, inputs.select([0, 1, 2]), inputs.select([3]), config
    )
    assert len(log.epochs) == 1
    deltas = training.entity_deltas(mt, inputs.select([0, 1, 2]), layer=0)
    torch.testing.assert_close(random_editor.mean, deltas.mean(dim=0), rtol=1e-4, atol=1e-5)
    null_log = training.train_editor(
        mt, editors.new_editor("null", mt, 0), inputs.select([0]), inputs.select([3]), config
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
    directory = training.train_run(_run_args(layers=[0, 1]), mt=mt)

    assert directory == results / "tiny_run"
    record = training.load_run(directory)
    assert record.args.layers == [0, 1]
    assert record.seed == 0
    assert record.hidden_size == 32
    split = record.split
    assert len(split.train) + len(split.validation) + len(split.test) == 4
    assert split.test and split.validation and split.train
    assert not set(split.train) & set(split.test)
    raw = json.loads((directory / "args.json").read_text())
    assert raw["args"]["lam_kl"] == 10.0
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
    assert training.list_run_editors(directory) == {"linear": [0, 1]}
    editor = training.load_run_editor(directory, layer=1, mt=mt)
    assert editor.layer == 1
    test_samples = training.load_run_samples(directory, "test")
    assert test_samples["id"] == split.test
    train_entities = set(training.load_run_samples(directory, "train")["entity"])
    assert not train_entities & set(test_samples["entity"])
    with pytest.raises(FileNotFoundError, match="no finished mlp editor"):
        training.load_run_editor(directory, layer=0, editor_type="mlp")


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

    monkeypatch.setattr(training, "train_editor", interrupt_second)
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
    ]
    assert train_editors.main(argv) == 0
    assert "editors saved under" in capsys.readouterr().out
    directory = results / "cli_run"
    assert training.list_run_editors(directory) == {"linear": [1], "identity": [1]}
    record = training.load_run(directory)
    assert record.args.editor_types == ["linear", "identity"]
    assert record.args.device == "cpu"
