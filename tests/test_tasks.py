"""The invoke tasks are real entry points: they list well and fail with instructions."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from remedi import editors, env, settings, training
from scripts import train_editors
from tests.toy_fixtures import BuiltToyWorld

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_invoke(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_listed(*names: str) -> None:
    """``invoke --list`` succeeds and names every task of ``names``."""
    listing = run_invoke("--list")
    assert listing.returncode == 0, listing.stderr
    for name in names:
        assert name in listing.stdout


def test_list_shows_the_gate_and_the_experiments():
    assert_listed(
        "install",
        "presubmit.lint",
        "presubmit.mypy",
        "presubmit.pytest",
        "x.toy.build",
        "x.train.counterfact",
        "x.eval.gen.counterfact",
        "x.quickstart",
    )


def test_eval_without_trained_editors_names_the_command_to_run(tmp_path: Path):
    result = run_invoke(
        "x.eval.gen.counterfact", "--model", "gpt2", env={"REMEDI_RESULTS_DIR": str(tmp_path)}
    )
    assert result.returncode != 0
    assert "no trained editors for model 'gpt2'" in result.stderr
    assert "invoke x.train.counterfact --model gpt2" in result.stderr


def test_train_with_unknown_model_and_no_layer_asks_for_one(tmp_path: Path):
    result = run_invoke(
        "x.train.counterfact",
        "--model",
        "my-org/new-model",
        env={"REMEDI_RESULTS_DIR": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "pass --layer N" in result.stderr


@pytest.mark.slow
def test_training_a_toy_model_applies_the_toy_flags(small_world: BuiltToyWorld, tmp_path: Path):
    results = tmp_path / "results"
    result = run_invoke(
        "x.train.counterfact",
        "--model",
        "toy-small",
        "--max-epochs",
        "1",
        "--device",
        "cpu",
        env={
            "REMEDI_MODELS_DIR": str(small_world.models_dir),
            "REMEDI_DATA_DIR": str(small_world.data_dir),
            "REMEDI_RESULTS_DIR": str(results),
        },
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "training toy" not in result.stderr, "the built world should have been reused"

    # What the toy flags mean, as the script reads them; they must change something.
    parse = train_editors.parse_args
    expected = train_editors.run_args(
        parse(["-n", "x", "-m", "toy-small", *settings.training_flags("toy-small", "counterfact")])
    )
    defaults = train_editors.run_args(parse(["-n", "x", "-m", "toy-small"]))
    toy_fields = [
        field.name
        for field in dataclasses.fields(training.RunArgs)
        if getattr(expected, field.name) != getattr(defaults, field.name)
    ]
    assert {"use_all_entity_tokens", "use_last_attribute_token", "lr", "lam_kl"} <= set(toy_fields)

    run = results / "editors_counterfact_toy-small"
    args = training.load_run(run).args
    for name in toy_fields:
        assert getattr(args, name) == getattr(expected, name), name
    layer = settings.editor_layer("toy-small", "counterfact")
    assert args.layers == [layer]
    assert args.max_epochs == 1
    assert args.dataset_file == str(small_world.paths.counterfact_file)

    # The flags reach the saved editor and its training log.
    editor_config = editors.read_editor_config(run / "linear" / str(layer))
    for option, value in expected.editor_options("linear").items():
        assert getattr(editor_config, option) == value, option
    train_log = json.loads((run / "linear" / str(layer) / "train_log.json").read_text())
    expected_config = dataclasses.replace(expected.training_config(), max_epochs=1)
    assert training.TrainingConfig.from_dict(train_log["config"]) == expected_config


def test_sweep_layers_of_any_toy_world_come_from_its_build_config():
    assert tasks._sweep_layers("toy-longtail", "") == [0, 1, 2, 3]
    assert tasks._sweep_layers("toy-small-gptj", "") == [0, 1]
    assert tasks._sweep_layers("gpt2", "1, 3") == [1, 3]
    with pytest.raises(tasks.Exit, match=r"unknown toy world 'toy-huge'.*valid names"):
        tasks._sweep_layers("toy-huge", "")


def test_smollm2_trains_on_the_file_and_recipe_its_settings_were_chosen_on(tmp_path: Path):
    # The settings name EasyEdit's CounterFact under the shared data folder, read by its own
    # loader (ROME's counterfact.json cannot be downloaded offline).
    (tmp_path / "counterfact_easyedit").mkdir()
    train_file = tmp_path / "counterfact_easyedit" / "counterfact-train.json"
    train_file.write_text("[]", encoding="utf-8")
    with env.overridden(REMEDI_SHARED_DATA=tmp_path):
        assert tasks._dataset_args("smollm2-135m", "counterfact") == [
            "-d",
            "counterfact_easyedit",
            "--dataset-file",
            str(train_file),
        ]
        # A file the user names wins; a model without a source keeps the script's default.
        assert tasks._dataset_args("smollm2-135m", "counterfact", "cf.json") == [
            "--dataset-file",
            "cf.json",
        ]
        assert tasks._dataset_args("gpt2", "counterfact") == []
    with (
        env.overridden(REMEDI_SHARED_DATA=tmp_path / "elsewhere"),
        pytest.raises(tasks.Exit, match="REMEDI_SHARED_DATA") as missing,
    ):
        tasks._dataset_args("smollm2-135m", "counterfact")
    assert "counterfact-train.json" in str(missing.value)

    # The recipe parses into the settings the SmolLM2 row was measured with.
    flags = settings.training_flags("smollm2-135m", "counterfact")
    parsed = train_editors.run_args(train_editors.parse_args(["-n", "x", "-m", "m", *flags]))
    assert parsed.use_all_entity_tokens and parsed.use_last_attribute_token
    assert (parsed.lr, parsed.lam_kl, parsed.max_train_samples, parsed.max_epochs) == (
        1e-2,
        1.0,
        1215,
        2,
    )
    assert settings.training_flags("gpt2", "counterfact") == []
    assert tasks._sweep_layers("smollm2-135m", "") == list(range(30))


EVALUATION_TASKS = (
    "x.eval.gen.counterfact",
    "x.eval.cls.counterfact",
    "x.eval.med.counterfact",
    "x.eval.gen.biosbias",
    "x.eval.cls.biosbias",
    "x.eval.ent.mcrae",
)


@pytest.mark.parametrize("name", EVALUATION_TASKS)
def test_every_evaluation_task_offers_the_split_and_says_what_it_is(name: str):
    result = run_invoke("--help", name)
    assert result.returncode == 0, result.stderr
    assert "--split" in result.stdout and "--small" in result.stdout
    assert "reference" in result.stdout


def test_a_split_that_means_nothing_is_refused_by_the_script_with_the_fix(tmp_path: Path):
    result = run_invoke(
        "x.eval.med.counterfact",
        "--model",
        "gpt2",
        "--small",
        env={"REMEDI_RESULTS_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "scripts.eval_fact_mediation" in result.stdout  # the echoed command
    assert "--small" in result.stdout
    assert "goes with --split reference" in result.stderr
