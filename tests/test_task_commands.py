"""What the experiment tasks run: the script and its exact arguments, per dataset and stage.

The expected commands were recorded from tasks.py before its plumbing was shared by helpers
(one per stage); a change here changes what a paper experiment runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

import tasks


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, list[str]]]:
    """The (script, arguments) the tasks run, in order, with results under ``tmp_path``."""
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks, "_python", lambda c, module, args: ran.append((module, args)))
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    return ran


def test_train_passes_the_name_layer_and_flags_it_was_given(commands):
    tasks.train_counterfact(Context(), model="gpt2", device="cuda", layer=2, random=True)
    assert commands == [
        (
            "scripts.train_editors",
            shlex.split(
                "-n editors_counterfact_gpt2_random -m gpt2 -d counterfact -l 2 "
                "--counterfact-prompt paraphrase --seed 0 --device cuda --random"
            ),
        )
    ]


def test_an_editing_layer_sweep_trains_evaluates_each_layer_and_collects(commands, tmp_path):
    tasks.sweep_gen_biosbias(Context(), layers="0,2")
    editors = str(tmp_path / "editors_biosbias_gptj_sweep")
    assert commands == [
        (
            "scripts.train_editors",
            shlex.split("-n editors_biosbias_gptj_sweep -m gptj -d biosbias -l 0 2"),
        ),
        *[
            (
                "scripts.eval_bias_gen",
                [
                    *["-n", f"sweep_gen_biosbias_gptj/layer_{layer}", "-e", editors, "-m", "gptj"],
                    *["-l", str(layer), "--max-samples", "100"],
                ],
            )
            for layer in (0, 2)
        ],
        (
            "scripts.sweep_layers",
            [
                *shlex.split("--kind gen_biosbias -n sweep_gen_biosbias_gptj --layers 0 2"),
                *["--title", "Bias in Bios editing layer sweep, gptj"],
            ],
        ),
    ]


def test_classification_adds_the_control_model_only_when_its_editors_exist(
    commands, tmp_path, capsys
):
    trained = tmp_path / "editors_counterfact_gpt2"
    trained.mkdir()
    expected = ["-n", "eval_cls_counterfact_gpt2", "-e", str(trained), "-m", "gpt2"]
    expected += ["-l", "0", "--entity-layers", "10"]

    tasks.eval_cls_counterfact(Context(), model="gpt2")
    assert commands[-1] == ("scripts.eval_fact_cls", expected)
    assert "invoke x.train.counterfact --model gpt2 --random" in capsys.readouterr().out

    control = tmp_path / "editors_counterfact_gpt2_random"
    control.mkdir()
    tasks.eval_cls_counterfact(Context(), model="gpt2")
    assert commands[-1] == (
        "scripts.eval_fact_cls",
        [*expected, "--control-editors-dir", str(control)],
    )


def test_an_evaluation_without_its_editors_names_the_training_task(commands, tmp_path):
    with pytest.raises(Exit) as missing:
        tasks.eval_ent_mcrae(Context(), model="gpt2", random=True)
    assert missing.value.message == (
        f"no trained McRae editors for model 'gpt2' at {tmp_path / 'editors_mcrae_gpt2_random'}"
        "; train them first with\n    invoke x.train.mcrae --model gpt2 --random"
    )
    assert commands == []
