"""The direction dump: what it holds per sample, read back from disk, resumed, and refused.

A tiny random GPT-2 (3 layers) with an editor trained for one epoch at layer 1 on a small toy
world's CounterFact: the checks are of definitions (the stored states are the LM's, the edit adds
the stored direction), not of what the directions mean.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from invoke.context import Context
from invoke.exceptions import Exit

import tasks
from remedi import editors, errors, io, models, training
from remedi.evaluation.probing import dump
from remedi.toy import export
from remedi.toy.world import generate_world
from scripts import dump_directions
from tests.conftest import one_epoch_run, save_tiny_gpt2, train_runs
from tests.test_tasks import run_invoke

LAYER = 1
NUM_LAYERS = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dump")
    file = root / "data" / "counterfact.json"
    io.write_json(file, export.counterfact_records(generate_world(seed=0, num_entities=12), seed=0))
    model_dir = save_tiny_gpt2(tokenizer, root / "tiny-model", n_layer=NUM_LAYERS)
    results = root / "results"
    run = dataclasses.replace(one_epoch_run("editors", model_dir, file), layers=[LAYER])
    train_runs(results, run)
    return {"model": model_dir, "results": results, "run": results / "editors"}


def _argv(setup: dict[str, Path], name: str, *more: str) -> list[str]:
    argv = ["-n", name, "-e", str(setup["run"]), "-m", str(setup["model"]), "--device", "cpu"]
    return [*argv, *more]


def _dump_dir(setup: dict[str, Path], name: str) -> Path:
    return setup["results"] / name / "linear" / str(LAYER)


def test_the_invoke_task_dumps_each_samples_direction_and_entity_states(setup):
    # The real task, as a user runs it, on the run's test split.
    model, results = str(setup["model"]), str(setup["results"])
    result = run_invoke(
        *["x.dump.counterfact", "--model", model, "--editors", "editors", "--device", "cpu"],
        env={"REMEDI_RESULTS_DIR": results},
    )
    assert result.returncode == 0, result.stderr
    assert "dump directions" in result.stderr  # the progress bar
    [directory] = setup["results"].glob("directions_counterfact_*/linear/1")
    loaded = dump.load_dump(directory)
    record = training.load_run(setup["run"])
    assert [sample.id for sample in loaded.samples] == list(record.split.test)
    assert loaded.manifest.settings.layer == LAYER and loaded.manifest.settings.split == "test"
    count, hidden = len(loaded), loaded.manifest.hidden_size
    assert loaded.tensors["direction"].shape == (count, hidden)
    assert loaded.tensors["entity_pre"].shape == (count, NUM_LAYERS, hidden)

    mt = models.load_model(str(setup["model"]), device="cpu")
    editor = training.load_run_editor(setup["run"], LAYER, mt=mt)
    samples = [dict(row) for row in training.load_run_samples(setup["run"], "test")]
    torch.testing.assert_close(
        loaded.tensors["direction"], editors.editor_directions(mt, editor, samples).cpu()
    )
    for index, sample in enumerate(samples):
        # Each prompt alone (no padding): the entity's last token in it, every block's output.
        encoded = mt.tokenizer(sample["prompt"], return_offsets_mapping=True, return_tensors="pt")
        end = sample["prompt"].rindex(sample["entity"]) + len(sample["entity"])
        spans = encoded.pop("offset_mapping")[0]
        position = max(i for i, (start, _) in enumerate(spans.tolist()) if start < end)
        assert loaded.tensors["entity_token"][index] == position
        with torch.no_grad():
            states = mt.model(**encoded, output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is block l's output, except the last, which has the final norm.
        for layer in range(NUM_LAYERS - 1):
            torch.testing.assert_close(
                loaded.tensors["entity_pre"][index, layer], states[layer + 1][0, position]
            )

    pre, post = loaded.tensors["entity_pre"], loaded.tensors["entity_post"]
    # Below the editor's layer nothing changes; at it the direction is added; above it, it spreads.
    torch.testing.assert_close(post[:, :LAYER], pre[:, :LAYER], rtol=0, atol=0)
    torch.testing.assert_close(post[:, LAYER] - pre[:, LAYER], loaded.tensors["direction"])
    assert not torch.allclose(post[:, LAYER + 1], pre[:, LAYER + 1])
    attribute = precompute_attribute(mt, samples)
    torch.testing.assert_close(loaded.tensors["attribute"], attribute)


def precompute_attribute(mt: models.ModelAndTokenizer, samples: list[dict]) -> torch.Tensor:
    from remedi import precompute

    inputs = precompute.editor_inputs(mt, samples, [LAYER], with_targets=False)
    return inputs.attribute(LAYER)


def test_an_interrupted_dump_resumes_at_its_missing_shard(setup, monkeypatch):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    argv = _argv(setup, "resumed", "--shard-size", "2", "--max-samples", "5")
    assert dump_directions.main(argv) == 0
    directory = _dump_dir(setup, "resumed")
    shards = sorted(directory.glob("shard_*.safetensors"))
    assert [path.name for path in shards] == [dump.SHARD_FILE.format(i) for i in range(3)]
    complete = dump.load_dump(directory)

    # As if the run had died before its second shard: the manifest unfinished, the shard absent.
    manifest = io.read_json(directory / dump.MANIFEST_FILE)
    io.write_json(directory / dump.MANIFEST_FILE, {**manifest, "complete": False})
    with pytest.raises(errors.MissingFileError, match="not finished; run the same command"):
        dump.load_dump(directory)
    shards[1].unlink()
    kept = {path: os.stat(path).st_mtime_ns for path in (shards[0], shards[2])}
    assert dump_directions.main(argv) == 0
    assert {path: os.stat(path).st_mtime_ns for path in kept} == kept  # not recomputed
    resumed = dump.load_dump(directory)
    for key, tensor in complete.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], tensor, rtol=0, atol=0)


def test_a_dump_of_other_samples_is_refused_unless_rerun(setup, monkeypatch):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(setup["results"]))
    assert dump_directions.main(_argv(setup, "refused", "--max-samples", "3")) == 0
    with pytest.raises(errors.MismatchError, match=r"other settings.*--rerun"):
        dump_directions.main(_argv(setup, "refused", "--max-samples", "4"))
    assert dump_directions.main(_argv(setup, "refused", "--max-samples", "4", "--rerun")) == 0
    assert len(dump.load_dump(_dump_dir(setup, "refused"))) == 4
    with pytest.raises(SystemExit):
        dump_directions.main(_argv(setup, "refused", "--small"))  # --small needs the reference


def test_reading_no_dump_says_how_to_write_one(tmp_path):
    with pytest.raises(errors.MissingFileError, match=r"invoke x\.dump"):
        dump.load_dump(tmp_path)


def test_dump_all_dumps_what_is_trained_and_names_what_is_not(monkeypatch, tmp_path, capsys):
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks, "_python", lambda c, module, args: ran.append((module, args)))
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    with pytest.raises(Exit, match="no trained editors for model 'gpt2' to dump"):
        tasks.dump_all(Context(), model="gpt2")
    run = tmp_path / "editors_mcrae_gpt2"
    args = training.RunArgs(name=run.name, model="gpt2", dataset="mcrae", layers=[5])
    split = training.RunSplit(train=[], validation=[], test=[])
    record = training.RunRecord(args=args, seed=0, model_name="gpt2", hidden_size=8, split=split)
    io.write_json(run / training.ARGS_FILE, record.to_dict())
    tasks.dump_all(Context(), model="gpt2", split="reference", small=True)
    assert ran == [
        (
            "scripts.dump_directions",
            [
                *["-n", "directions_mcrae_gpt2", "-e", str(run), "-m", "gpt2", "-l", "5"],
                *["--split", "reference", "--small"],
            ],
        )
    ]
    shown = capsys.readouterr().out
    assert "invoke x.train.counterfact --model gpt2" in shown
    assert "invoke x.train.biosbias --model gpt2" in shown
