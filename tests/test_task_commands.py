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
from tests.toy_fixtures import toy_dirs

COUNTERFACT_SAMPLE = Path(__file__).parent / "fixtures" / "counterfact_sample.json"


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, list[str]]]:
    """The (script, arguments) the tasks run, in order, with results under ``tmp_path``."""
    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks, "_python", lambda c, module, args: ran.append((module, args)))
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    return ran


def _recorded_run(directory: Path, model: str, dataset: str, layers: list[int] | None) -> None:
    """A training run's args.json as scripts.train_editors records it (the editors themselves
    are not needed to decide the command)."""
    from remedi import io, training

    args = training.RunArgs(name=directory.name, model=model, dataset=dataset, layers=layers)
    split = training.RunSplit(train=[], validation=[], test=[])
    record = training.RunRecord(args=args, seed=0, model_name=model, hidden_size=8, split=split)
    io.write_json(directory / training.ARGS_FILE, record.to_dict())


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
                    *["-l", str(layer), "--split", "validation", "--max-samples", "1000"],
                ],
            )
            for layer in (0, 2)
        ],
        (
            "scripts.sweep_layers",
            [
                *shlex.split("--kind gen_biosbias -n sweep_gen_biosbias_gptj --layers 0 2"),
                *["--title", "Bias in Bios editing layer sweep, gptj"],
                *shlex.split("--criterion reference --num-layers 28"),
            ],
        ),
    ]


def test_the_counterfact_sweep_runs_what_its_criterion_needs_on_1000_cases(commands, tmp_path):
    tasks.sweep_gen_counterfact(Context(), model="gpt2", layers="0,11")
    evaluations = [args for script, args in commands if script == "scripts.eval_fact_gen"]
    assert [args[args.index("-l") + 1] for args in evaluations] == ["0", "11"]
    benchmarks = "-b efficacy paraphrase neighborhood generation"
    assert shlex.join(evaluations[0]).endswith(f"{benchmarks} --split validation --max-cases 1000")
    # The reference's criterion leaves GPT-2's last layer (11) out: the collector is told it.
    assert commands[-1][1][-4:] == ["--criterion", "reference", "--num-layers", "12"]

    commands.clear()
    tasks.sweep_gen_counterfact(
        Context(), model="gpt2", layers="0", split="reference", criterion="rome_score"
    )
    evaluation = shlex.join(commands[1][1])
    assert evaluation.endswith("-b efficacy paraphrase neighborhood --split reference --small")
    assert commands[-1][1][-4:] == ["--criterion", "rome_score", "--num-layers", "12"]


def test_a_sweep_refuses_an_unknown_split_or_criterion_before_running_anything(commands):
    with pytest.raises(Exit, match="--split takes validation or reference"):
        tasks.sweep_gen_biosbias(Context(), layers="0", split="test")
    with pytest.raises(Exit, match="has no criterion 'rome_score'; use one of reference, top1"):
        tasks.sweep_gen_biosbias(Context(), layers="0", criterion="rome_score")
    assert commands == []


def test_the_entity_sweep_reads_the_layers_from_the_editors_up(commands, tmp_path):
    run = tmp_path / "editors_counterfact_gpt2"
    run.mkdir()
    _recorded_run(run, "gpt2", "counterfact", [9])
    tasks.sweep_cls_counterfact(Context(), model="gpt2")
    [(_, evaluation), (_, collection)] = commands
    entity_layers = evaluation[evaluation.index("--entity-layers") + 1 :]
    assert entity_layers == ["9", "10", "11", "--split", "validation", "--max-samples", "1000"]
    assert collection[-4:] == ["--criterion", "reference", "--editor-layer", "9"]


def test_classification_adds_the_control_model_only_when_its_editors_exist(
    commands, tmp_path, capsys
):
    trained = tmp_path / "editors_counterfact_gpt2"
    trained.mkdir()
    _recorded_run(trained, "gpt2", "counterfact", [0])
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


# ---------------------------------------------------------------------------------------
# The layer is decided once: at training (the paper's, from remedi.settings, or --layer), and an
# evaluation reads it from the run it evaluates.


def _arguments_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_an_editor_trained_at_layer_3_is_evaluated_at_layer_3(
    commands, tmp_path, tokenizer, monkeypatch
):
    from scripts import train_editors
    from tests.conftest import save_tiny_gpt2

    monkeypatch.setenv("REMEDI_DATA_DIR", str(tmp_path / "data"))
    # x.train.counterfact --layer 3, run for real on a tiny 4-layer GPT-2 and the sample data
    # in place of GPT-J and CounterFact.
    tasks.train_counterfact(Context(), layer=3, device="cpu", max_epochs=1)
    [(script, args)] = commands
    assert (script, _arguments_after(args, "-l")) == ("scripts.train_editors", "3")
    model_dir = save_tiny_gpt2(tokenizer, tmp_path / "tiny-gpt2", n_layer=4)
    args[args.index("-m") + 1] = str(model_dir)
    small = ["--batch-size", "2", "--test-size", "0.25", "--hold-out", "0.34"]
    assert train_editors.main([*args, *small, "--dataset-file", str(COUNTERFACT_SAMPLE)]) == 0
    assert (
        tmp_path / "editors_counterfact_gptj" / "linear" / "3" / "weights.safetensors"
    ).is_file()

    commands.clear()
    tasks.eval_gen_counterfact(Context())  # no --layer: GPT-J's paper layer is 1
    tasks.eval_cls_counterfact(Context())
    tasks.sweep_cls_counterfact(Context(), layers="0,1")
    assert [_arguments_after(args, "-l") for _, args in commands[:3]] == ["3", "3", "3"]

    commands.clear()
    tasks.eval_gen_counterfact(Context(), layer=2)  # an explicit layer still wins
    assert _arguments_after(commands[0][1], "-l") == "2"


def test_mcrae_trains_at_the_references_layer_and_is_evaluated_at_the_runs(commands, tmp_path):
    tasks.train_mcrae(Context())
    tasks.train_mcrae(Context(), model="EleutherAI/gpt-j-6B")  # the alias's hub name: the same
    assert [_arguments_after(args, "-l") for _, args in commands] == ["12", "12"]

    commands.clear()
    run = tmp_path / "editors_mcrae_gptj"
    run.mkdir()
    _recorded_run(run, "gptj", "mcrae", [5])
    tasks.eval_ent_mcrae(Context(), max_samples=10)
    expected = ["-n", "eval_ent_mcrae_gptj", "-e", str(run), "-m", "gptj", "-l", "5"]
    assert commands == [("scripts.eval_entailment", [*expected, "--max-samples", "10"])]
    commands.clear()
    tasks.eval_ent_mcrae(Context(), rewrite_unrelated=True, exact_norms=True)
    assert commands == [
        ("scripts.eval_entailment", [*expected, "--rewrite-unrelated", "--exact-norms"])
    ]


def test_biosbias_training_passes_a_record_limit_only_when_given(commands):
    tasks.train_biosbias(Context(), model="gpt2")
    tasks.train_biosbias(Context(), model="gpt2", max_records=0)
    assert "--max-records" not in commands[0][1]
    assert _arguments_after(commands[1][1], "--max-records") == "0"


def test_a_run_of_several_layers_is_evaluated_at_the_papers_or_asks_for_one(commands, tmp_path):
    run = tmp_path / "editors_biosbias_gpt2"
    run.mkdir()
    _recorded_run(run, "gpt2", "biosbias", [4, 10])
    tasks.eval_gen_biosbias(Context(), model="gpt2")
    assert _arguments_after(commands[-1][1], "-l") == "10"  # GPT-2's Bias in Bios layer

    _recorded_run(run, "gpt2", "biosbias", [4, 5])
    with pytest.raises(Exit, match=r"trained editors at layers \[4, 5\]; pass --layer N"):
        tasks.eval_gen_biosbias(Context(), model="gpt2")


def test_biosbias_generation_passes_its_length_count_only_when_given(commands, tmp_path):
    _recorded_run(tmp_path / "editors_biosbias_gpt2", "gpt2", "biosbias", [10])
    tasks.eval_gen_biosbias(Context(), model="gpt2")
    tasks.eval_gen_biosbias(Context(), model="gpt2", generation_length="own-prompt")
    assert "--generation-length" not in commands[0][1]  # the script's default, the reference's
    assert commands[1][1][-2:] == ["--generation-length", "own-prompt"]


# ---------------------------------------------------------------------------------------
# A toy task finds or builds its toy data itself.


def test_harm_on_a_toy_model_edits_its_worlds_counterfact_without_trained_editors(
    commands, tmp_path, small_world
):
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        tasks.harm_run(Context(), model="toy-small", edits="5")
        editors = tmp_path / "editors_counterfact_toy-small"
        editors.mkdir()
        tasks.harm_run(Context(), model="toy-small", edits="5")
    start = ["--model", "toy-small", "--method", "rome", "--mode", "instance-sequential"]
    start += ["--edits", "5", "--batch-size", "10", "--tasks", "all"]
    assert commands == [
        ("scripts.harm_run", [*start, "--dataset-file", str(small_world.paths.counterfact_file)]),
        ("scripts.harm_run", [*start, "--editors", str(editors)]),
    ]


def test_a_toy_canonical_experiment_exports_its_data_when_it_is_missing(
    commands, tmp_path, small_world
):
    from remedi.toy import canonical as toy_canonical

    data_root = tmp_path / "toy_data"
    config = tmp_path / "toy_works_for_full.yaml"
    config.write_text(
        "model: toy-small\ntask: toy_works_for\n"
        f"data_root: {data_root}\nsplit: val\nmethod:\n  name: full\n"
    )
    tasks.canon_run(Context(), str(config))
    assert commands == [
        ("scripts.canon", ["toy-export", "--world", "toy-small", "--out", str(data_root)]),
        ("scripts.canon", ["run", str(config)]),
    ]

    commands.clear()
    world = toy_canonical.load_world(small_world.paths.world_file)
    toy_canonical.export_toy_canonical(world, data_root, people_per_split=4)
    tasks.canon_run(Context(), str(config))
    assert commands == [("scripts.canon", ["run", str(config)])]


# ---------------------------------------------------------------------------------------
# Every evaluation task takes the evaluation scripts' --split and --small.

EVALUATIONS = [
    ("eval_gen_counterfact", "counterfact", "scripts.eval_fact_gen"),
    ("eval_cls_counterfact", "counterfact", "scripts.eval_fact_cls"),
    ("eval_med_counterfact", None, "scripts.eval_fact_mediation"),
    ("eval_gen_biosbias", "biosbias", "scripts.eval_bias_gen"),
    ("eval_cls_biosbias", "biosbias", "scripts.eval_bias_cls"),
    ("eval_ent_mcrae", "mcrae", "scripts.eval_entailment"),
]


@pytest.mark.parametrize(("name", "dataset", "script"), EVALUATIONS)
def test_every_evaluation_task_passes_the_split_through(commands, tmp_path, name, dataset, script):
    if dataset is not None:
        run = tmp_path / f"editors_{dataset}_gpt2"
        run.mkdir()
        _recorded_run(run, "gpt2", dataset, [0])
    evaluate = getattr(tasks, name)
    evaluate(Context(), model="gpt2")
    evaluate(Context(), model="gpt2", split="reference", small=True)
    evaluate(Context(), model="gpt2", split="validation")
    [(default_script, default), (small_script, small), (_, validation)] = commands
    assert default_script == small_script == script
    # Nothing by default (the script's own default, the test split), else exactly what was asked.
    assert "--split" not in default and "--small" not in default
    assert small[-3:] == ["--split", "reference", "--small"]
    assert small[: len(default)] == default
    assert validation[-2:] == ["--split", "validation"]
