"""Canonical examples: the six real task formats, the YAML schema, one experiment per task on a
tiny random model, the validation-to-test selection, a resumed sweep, the toy export."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from remedi import canon, errors
from remedi.canon import report, sweep
from remedi.canon.experiment import EpochStats, ExperimentResult
from remedi.data import canonical
from tests.conftest import tiny_gpt2

# Lines per (task, role) for (val, test), counted in the real files.
REAL_COUNTS = {
    "country_capital": {
        "train": (119, 119),
        "eval": (582, 583),
        "hard_negative": (116, 117),
        "unconditional": (119, 119),
    },
    "company_ceo": {
        "train": (86, 86),
        "eval": (421, 425),
        "hard_negative": (219, 221),
        "unconditional": (86, 86),
    },
    "pronoun_gender_bias": {
        "train": (20, 20),
        "eval": (320, 360),
        "hard_negative": (235, 231),
        "unconditional": (320, 360),
    },
    "temporal": {
        "train": (75, 76),
        "eval": (452, 486),
        "hard_negative": (389, 325),
        "unconditional": (75, 76),
    },
    "stereoset": {
        "train": (1053, 1053),
        "eval": (1053, 1053),
        "hard_negative": (1053, 1053),
        "unconditional": (1053, 1053),
    },
    "verb_conjugation": {
        "train": (240, 240),
        "eval": (360, 360),
        "hard_negative": (720, 720),
        "unconditional": (360, 360),
    },
}


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_each_real_task_loads_with_its_counts_per_split(task):
    loader = canonical.TASK_LOADERS[task]
    pair = canonical.CANONICAL_TASKS[task].pair
    for role, counts in REAL_COUNTS[task].items():
        for split, expected in zip(("val", "test"), counts, strict=True):
            examples = loader(role, split)
            assert len(examples) == expected, (task, role, split)
            if role == "unconditional":
                assert all(e.prefix == "" and e.suffix for e in examples)
            elif role in ("train", "eval"):
                assert all(e.prefix and e.suffix for e in examples)
                assert all((e.suffix2 is not None) == pair for e in examples)


@pytest.mark.shared_data
def test_the_general_texts_load():
    assert len(canonical.load_general_texts("val")) == 4007
    assert len(canonical.load_general_texts("test")) == 4007
    short = canonical.load_general_texts("short")
    assert len(short) == 100 and all(e.suffix for e in short)
    assert len(canonical.load_general_texts("val", limit=7)) == 7


def test_a_line_missing_a_field_names_file_line_and_field(tmp_path: Path):
    path = tmp_path / "task.jsonl"
    path.write_text(
        json.dumps({"prefix": "The capital of France is", "suffix": " Paris"})
        + "\n"
        + json.dumps({"prefix": "The capital of Spain is"})
        + "\n"
    )
    with pytest.raises(errors.FileFormatError) as raised:
        canonical.read_canonical_file(path, "suffix")
    message = str(raised.value)
    assert f"{path}:2" in message and "'suffix'" in message and "\n" not in message
    with pytest.raises(errors.FileFormatError, match="'country'"):
        canonical.read_canonical_file(path, "suffix", ("country",))


def test_a_missing_file_says_where_the_data_should_be(tmp_path: Path):
    with pytest.raises(errors.MissingFileError, match="REMEDI_SHARED_DATA"):
        canonical.load_country_capital("train", "val", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# The YAML schema.


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


BASE: dict[str, Any] = {"model": "gpt2", "task": "country_capital", "method": {"name": "full"}}


def test_a_valid_config_gets_the_task_defaults(tmp_path: Path):
    config = canon.load_config(_write_yaml(tmp_path / "exp.yaml", BASE))
    assert config.name == "exp" and config.training.epochs == 10
    assert config.loss_type is None and config.method.name == "full"
    lr = canon.with_overrides(config, {"training.learning_rate": "1e-3"})
    assert lr.training.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**BASE, "epochs": 3}, "unknown key 'epochs'; allowed keys: model, task, name"),
        (
            {**BASE, "training": {"lr": 0.1}},
            "unknown key 'training.lr'; allowed keys: epochs, learning_rate",
        ),
        ({**BASE, "loss_type": "great"}, "unknown loss_type 'great'; allowed: good, bad, balance"),
        ({**BASE, "loss_type": "balance"}, "needs pair examples but task country_capital"),
        ({**BASE, "method": {"name": "magic"}}, "unknown method.name 'magic'; allowed: full"),
        ({**BASE, "training": {"epochs": "ten"}}, "key 'training.epochs' must be int"),
        ({"task": "country_capital"}, "missing required key 'model'"),
    ],
)
def test_bad_yaml_is_one_line_naming_file_key_and_fix(tmp_path: Path, data, expected):
    path = _write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(errors.UsageError) as raised:
        canon.load_config(path)
    message = str(raised.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# One experiment per real task on a tiny random model.


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tiny_config(model_dir: Path, output: Path, task: str, **extra: Any) -> canon.ExperimentConfig:
    data: dict[str, Any] = {
        "model": str(model_dir),
        "task": task,
        "name": f"tiny-{task}",
        "output_dir": str(output),
        "training": {"epochs": 1, "learning_rate": 1e-2, "batch_size": 4, "max_train_examples": 4},
        "evaluation": {
            "batch_size": 8,
            "max_eval_examples": 6,
            "max_hard_negatives": 4,
            "max_unconditional": 4,
            "max_general_texts": 4,
            "max_length": 64,
        },
        "device": "cpu",
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return canon.config_from_dict(data, "test config")


MEMIT_TINY = {
    "name": "memit",
    "hparams_file": str(Path(canon.methods.__file__).parents[1] / "methods/hparams/memit/toy.json"),
    "memit_layers": [0, 1],
    "mom2_adjustment": False,
}

TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "country_capital": {"method": {"name": "lora", "lora_rank": 2}},
    "company_ceo": {"regularization": {"kl_weight": 0.5}},
    "pronoun_gender_bias": {"regularization": {"l2_weight": 0.1}},
    "temporal": {"method": MEMIT_TINY},
    "stereoset": {"method": {"name": "lora", "lora_rank": 2}, "regularization": {"kl_weight": 1}},
    "verb_conjugation": {},
}


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(TASK_SETTINGS))
def test_one_experiment_runs_on_each_real_task(tiny_model_dir: Path, tmp_path: Path, task: str):
    config = _tiny_config(tiny_model_dir, tmp_path / task, task, **TASK_SETTINGS[task])
    result = canon.run_experiment(config)
    # MEMIT is one edit: before (epoch 0) and after (1), like one epoch of training.
    assert [stats.epoch for stats in result.epochs] == [0, 1]
    assert result.counts["train"] == 4 and result.counts["evaluation"] == 6
    # The KL term reads BoolQ's 2,935 passages, not the bound's val100 texts.
    assert result.counts["regularization"] == (2935 if config.regularization.kl_weight else 0)
    assert result.loss_type == canonical.CANONICAL_TASKS[task].loss_type
    for stats in result.epochs:
        assert 0.0 <= stats.success <= 1.0
        losses = (stats.general_loss, stats.targeted_loss, stats.hard_negative_loss)
        assert all(torch.isfinite(torch.tensor(losses)))
    # One epoch at lr 1e-2 moves a random model: its losses change.
    assert result.epochs[1].general_loss != result.epochs[0].general_loss
    saved = canon.read_result(tmp_path / task)
    assert saved is not None and saved.to_dict() == result.to_dict()


@pytest.mark.shared_data  # reads the real country_capital task
def test_memit_refuses_a_loss_type_without_a_suffix_to_write(tiny_model_dir: Path, tmp_path):
    config = _tiny_config(
        tiny_model_dir, tmp_path, "country_capital", method=MEMIT_TINY, loss_type="bad"
    )
    with pytest.raises(errors.UsageError, match="loss_type 'bad' has no suffix to write"):
        canon.run_experiment(config)


def test_memit_requests_edit_at_the_subject_or_the_prefix():
    example = canonical.CanonicalExample("The capital of Peru is", " Lima", None, "Peru")
    (true,) = canon.methods.edit_requests([example], "true")
    (prefix,) = canon.methods.edit_requests([example], "prefix")
    assert (true.subject, true.target_new) == ("Peru", " Lima")
    assert prefix.subject == "The capital of Peru is"


# ---------------------------------------------------------------------------------------------
# Selection on validation within the bound.


def _result(name: str, rows: list[tuple[float, float]], split: str = "val") -> ExperimentResult:
    return ExperimentResult(
        name=name,
        task="t",
        method="full",
        split=split,
        loss_type="good",
        threshold=1.0,
        config={},
        epochs=[
            EpochStats(i, success, general, 1.0, 1.0) for i, (success, general) in enumerate(rows)
        ],
    )


def test_the_last_epoch_within_the_bound_is_selected_and_the_best_config_wins():
    # Epoch 2 degrades general loss by 5%: outside a 1% bound, inside a 10% bound.
    steady = _result("steady", [(0.1, 1.0), (0.4, 1.005), (0.9, 1.05)])
    eager = _result("eager", [(0.1, 1.0), (0.6, 1.009), (0.95, 1.2)])
    assert steady.selected(0.01).epoch == 1 and steady.selected(0.1).epoch == 2
    assert eager.selected(0.01).epoch == 1
    assert report.best_by_validation([steady, eager], 0.01)[("t", "full")].name == "eager"
    assert report.best_by_validation([steady, eager], 0.1)[("t", "full")].name == "steady"
    # Nothing within the bound: the unedited model (epoch 0) is what the config can claim.
    assert _result("wild", [(0.1, 1.0), (0.9, 2.0)]).selected(0.01).epoch == 0


def test_val_picks_the_largest_improvement_over_its_own_unedited_model():
    # "high" ends with the higher success but started higher: "low" improves more, as the seed
    # ranks (report_val_pythia.py:90).
    high = _result("high", [(0.5, 1.0), (0.6, 1.0)])
    low = _result("low", [(0.1, 1.0), (0.5, 1.0)])
    assert report.best_by_validation([high, low], 0.01)[("t", "full")].name == "low"


def test_test_runs_stop_at_the_val_epoch_and_average_with_a_standard_error():
    bound = 0.01
    # Chosen on val at epoch 1 (epoch 2 leaves the bound).
    chosen = _result("c", [(0.1, 1.0), (0.5, 1.005), (0.9, 1.5)])
    assert chosen.selected(bound).epoch == 1
    # Run A: epoch 2 is in bound and better, but val stopped at 1. Run B: epoch 1 leaves the
    # bound, so epoch 0 counts. Run C: in bound at 1.
    run_a = _result("a", [(0.2, 2.0), (0.6, 2.0), (1.0, 2.0)], "test")
    run_b = _result("b", [(0.2, 2.0), (0.8, 2.5), (0.9, 2.0)], "test")
    run_c = _result("c", [(0.0, 1.0), (0.3, 1.01), (0.3, 1.0)], "test")
    row = report.test_row(chosen, [run_a, run_b, run_c], bound)
    assert row.val_epoch == 1 and row.test_epochs == [1, 0, 1] and row.runs == 3
    assert row.success == pytest.approx((0.6 + 0.2 + 0.3) / 3)
    assert row.initial_success == pytest.approx((0.2 + 0.2 + 0.0) / 3)
    # Improvements 0.4, 0.0, 0.3: population std (the seed's np.std) over sqrt(3).
    gains = [0.4, 0.0, 0.3]
    mean = sum(gains) / 3
    population = (sum((g - mean) ** 2 for g in gains) / 3) ** 0.5
    assert row.success_stderr == pytest.approx(population / 3**0.5)
    sample = report.test_row(chosen, [run_a, run_b, run_c], bound, ddof=1).success_stderr
    assert sample == pytest.approx((sum((g - mean) ** 2 for g in gains) / 2) ** 0.5 / 3**0.5)
    assert row.general == pytest.approx((0.0 + 0.0 + 0.01) / 3)


def test_the_test_runs_are_seeds_0_to_n_minus_1_under_the_test_folder(tmp_path: Path):
    config = canon.config_from_dict({"model": "toy", "task": "country_capital", "seed": 7})
    chosen = _result("c", [(0.1, 1.0)])
    chosen.config = config.to_dict()
    configs = report.test_configs(chosen, tmp_path, runs=10)
    assert [c.seed for c in configs] == list(range(10))
    assert all(c.split == "test" for c in configs)
    assert configs[3].output_dir == str(tmp_path / "test" / "c" / "seed3")
    assert report.DEFAULT_RUNS == 10 and canon.SEED_BOUNDS == (1e-3, 1e-4, 1e-5)


def test_the_optimizer_is_adam_or_the_seeds_8bit_adam_and_names_what_it_needs():
    from remedi.canon.experiment import make_optimizer

    weight = torch.nn.Parameter(torch.zeros(2))
    adam = make_optimizer([weight], "adam", 1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.995)
    with pytest.raises(errors.UsageError, match="adam, adam8bit"):
        canon.config_from_dict(
            {"model": "toy", "task": "country_capital", "training": {"optimizer": "sgd"}}
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(errors.UsageError, match="pip install bitsandbytes"):
            make_optimizer([weight], "adam8bit", 1e-3)


# ---------------------------------------------------------------------------------------------
# The KL term's texts: disjoint from the texts the bound is measured on.


@pytest.mark.shared_data
def test_the_default_kl_texts_of_the_real_tasks_share_nothing_with_the_bound_set(tmp_path: Path):
    from remedi.canon.experiment import kl_texts

    config = canon.config_from_dict(
        {"model": "toy", "task": "country_capital", "regularization": {"kl_weight": 0.5}}
    )
    texts = {example.suffix for example in kl_texts(config, canonical.canonical_root())}
    assert len(texts) == 2935
    for split in ("val", "test"):
        bound = {example.suffix for example in canonical.load_general_texts(split)}
        assert not texts & bound
    # "short", the old choice, is the first 100 lines of the bound's own set.
    short = canon.with_overrides(config, {"regularization.kl_texts": "short"})
    short_texts = [e.suffix for e in kl_texts(short, canonical.canonical_root())]
    assert short_texts == [e.suffix for e in canonical.load_general_texts("val")][:100]


def test_kl_texts_name_a_corpus_and_old_results_keep_val100_short(tmp_path: Path):
    from remedi.canon.experiment import kl_texts, result_config

    path = tmp_path / "kl.txt"
    path.write_text("first text\n\nsecond text\n", encoding="utf-8")
    config = canon.config_from_dict(
        {
            "model": "toy",
            "task": "country_capital",
            "regularization": {"kl_weight": 0.5, "kl_texts": f"file:{path}"},
        }
    )
    assert [e.suffix for e in kl_texts(config, tmp_path)] == ["first text", "second text"]
    # A result written before kl_texts existed was regularised on val100-short.jsonl.
    old = _result("old", [(0.1, 1.0)])
    old.config = config.to_dict()
    del old.config["regularization"]["kl_texts"]
    assert result_config(old).regularization.kl_texts == "short"
    old.config["regularization"]["kl_weight"] = 0.0
    assert result_config(old).regularization.kl_texts is None


# ---------------------------------------------------------------------------------------------
# A sweep through submitit's local executor, resumed.


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_resumed_sweep_does_not_rerun_finished_experiments(tiny_model_dir: Path, tmp_path: Path):
    base = _tiny_config(tiny_model_dir, tmp_path / "unused", "verb_conjugation").to_dict()
    base.pop("output_dir")
    base.pop("name")
    _write_yaml(tmp_path / "tiny.yaml", base)
    sweep_file = _write_yaml(
        tmp_path / "sweep.yaml",
        {
            "output_dir": str(tmp_path / "sweep"),
            "experiments": [{"config": "tiny.yaml", "grid": {"seed": [0, 1, 2]}}],
        },
    )
    _, experiments = sweep.load_sweep(sweep_file)
    assert [c.name for c in experiments] == ["tiny-seed0", "tiny-seed1", "tiny-seed2"]
    # Before the interruption: seed0 finished; seed1 was running in a process that has died.
    canon.run_experiment(experiments[0])
    finished = Path(experiments[0].output_dir or "") / "result.json"
    before = finished.stat().st_mtime_ns
    stale = Path(experiments[1].output_dir or "")
    stale.mkdir(parents=True)
    (stale / "status.json").write_text(
        json.dumps({"state": "running", "pid": 2**22 + 17, "host": os.uname().nodename})
    )
    states = sweep.sweep_status(experiments)
    assert states["done"] == ["tiny-seed0"] and states["pending"] == ["tiny-seed1", "tiny-seed2"]

    states = sweep.run_sweep(sweep_file, "local", poll_seconds=0.5)
    assert states["done"] == ["tiny-seed0", "tiny-seed1", "tiny-seed2"]
    assert finished.stat().st_mtime_ns == before  # not rerun
    # A third run submits nothing.
    assert sweep.run_sweep(sweep_file, "local")["done"] == states["done"]
    assert finished.stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------
# The toy world's task.


@pytest.mark.slow
def test_the_toy_task_exports_in_the_canonical_formats(small_world, tmp_path: Path):
    from remedi.toy import canonical as toy_canonical

    world = toy_canonical.load_world(small_world.paths.world_file)
    counts = toy_canonical.export_toy_canonical(world, tmp_path, seed=0, people_per_split=6)
    task = canonical.CANONICAL_TASKS["toy_works_for"]
    loaded = {
        (role, split): canonical.load_task_file(task, role, split, tmp_path)
        for role in canonical.ROLES
        for split in canonical.SPLITS
    }
    for (role, split), examples in loaded.items():
        assert counts[f"toy_works_for/split/{task.files[role].stem}-{split}.jsonl"] == len(examples)
    assert len(loaded[("train", "val")]) == len(loaded[("train", "test")]) == 6
    # Two held-out templates, each bare and after the person's other facts.
    assert len(loaded[("eval", "val")]) == 4 * 6
    people = {
        split: {e.prefix.removesuffix(" works for") for e in loaded[("train", split)]}
        for split in canonical.SPLITS
    }
    assert not people["val"] & people["test"]
    for example in loaded[("train", "val")]:
        person = next(p for p in world.entities if p.name in example.prefix)
        assert example.suffix.strip() != person.facts["P108"]  # a new employer
    assert canonical.load_general_texts("val", tmp_path) and canonical.load_general_texts(
        "short", tmp_path
    )


def test_every_shipped_config_and_sweep_validates():
    root = Path(__file__).resolve().parents[1] / "configs" / "canon"
    configs = sorted(root.glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        canon.load_config(path)
    for path in sorted((root / "sweeps").glob("*.yaml")):
        _, experiments = sweep.load_sweep(path)
        assert experiments


def test_the_shipped_seed_sweeps_are_regenerated_byte_for_byte(tmp_path: Path):
    from remedi.canon import search_space

    root = Path(__file__).resolve().parents[1] / "configs" / "canon"
    for path in search_space.write_seed_sweeps(tmp_path):
        shipped = root / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), f"regenerate {shipped}"


def test_the_shipped_seed_sweeps_hold_the_seeds_search_space():
    from remedi.canon import search_space as space

    root = Path(__file__).resolve().parents[1] / "configs" / "canon" / "sweeps"
    for task in space.SEED_TASKS:
        _, experiments = sweep.load_sweep(root / f"seed_{task}_gpt2.yaml")
        assert len(experiments) == 2 * space.CONFIGS_PER_METHOD * len(space.RUN_SEEDS)
        for method, (low, high) in (
            ("full", space.FULL_LR_EXPONENT),
            ("lora", space.LORA_LR_EXPONENT),
        ):
            runs = [c for c in experiments if c.method.name == method]
            configs = {(c.training.learning_rate, c.regularization.kl_weight) for c in runs}
            assert len(configs) == space.CONFIGS_PER_METHOD
            assert sorted(c.seed for c in runs) == sorted([0, 1] * space.CONFIGS_PER_METHOD)
            for config in runs:
                assert config.task == task and config.model == "gpt2"
                assert 10**-high <= config.training.learning_rate <= 10**-low
                assert 0.1 <= config.regularization.kl_weight <= 1.0
                assert (config.training.epochs, config.training.batch_size) == (10, 1)
                assert config.training.grad_acc_steps == 5
                assert config.regularization.kl_batch_size == 1
                if method == "lora":
                    assert 1 <= config.method.lora_rank <= 256
                    assert config.method.lora_alpha == 8 and config.method.lora_dropout == 0
                    targets = config.method.lora_targets or []
                    layers = sorted({int(t.split(".")[1]) for t in targets})
                    # A contiguous block of MLP projections holding the middle layer.
                    assert layers == list(range(layers[0], layers[-1] + 1)) and 6 in layers
                    assert len(targets) == 2 * len(layers)
                    assert all(t.endswith(("mlp.c_fc", "mlp.c_proj")) for t in targets)


def test_the_lora_block_is_the_seeds_centred_range():
    from remedi.canon.search_space import lora_block

    # pythia-160m (12 layers) at a fraction giving 7 layers: range(3, 11) -> 3..10, as the
    # seed's shipped EleutherAI-pythia-160m-lora.0.sweep.yaml ("loratgt3to10").
    assert lora_block(12, 0.55) == list(range(3, 11))
    assert lora_block(12, 0.1) == [5, 6, 7]  # 2 layers -> range(5, 8)
    assert lora_block(12, 0.9) == list(range(1, 12))  # layer 12 does not exist


# ---------------------------------------------------------------------------------------------
# REMEDI: an editor's directions at the canonical examples' entities.

# A tiny random LM carries little from one token to the next: each prefix ends at its entity
# (where the direction is added) and each suffix is one token of the test tokenizer.
REMEDI_EXAMPLES = [
    canonical.CanonicalExample("Next comes Ann Smith", " is", None, "Ann Smith"),
    canonical.CanonicalExample("Next comes Bo Lee", " in", None, "Bo Lee"),
    canonical.CanonicalExample("Next comes Cy Park", " of", None, "Cy Park"),
]


def _remedi_inputs(mt: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    rows = [mt.tokenizer(prompt)["input_ids"] for prompt in prompts]
    length = max(len(ids) for ids in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    attention = torch.zeros(len(rows), length, dtype=torch.long)
    for row, ids in enumerate(rows):  # right padding, as the canonical scorer pads
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


@pytest.fixture(scope="module")
def wide_logits_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """The tiny GPT-2 with larger initial weights: at the default scale (0.02) its logits span
    less than one nat, so no edit of a hidden state can make a suffix 5 times likelier."""
    directory = tmp_path_factory.mktemp("tiny-gpt2-wide")
    tiny_gpt2(tokenizer, initializer_range=0.5).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_remedi_fits_its_examples_and_leaves_other_prompts_bit_identical(
    wide_logits_model_dir: Path, tmp_path: Path
):
    from remedi import editors, models
    from remedi.canon import scoring
    from remedi.canon.config import MethodSettings
    from remedi.canon.remedi_method import EditedModel, remedi_trainable

    torch.manual_seed(0)
    mt = models.load_model(str(wide_logits_model_dir), device="cpu")
    settings = MethodSettings(name="remedi", remedi_layer=0)
    trainable = remedi_trainable(mt, "toy_works_for", REMEDI_EXAMPLES, settings, False)
    device = torch.device("cpu")

    def scores(model: torch.nn.Module) -> torch.Tensor:
        return scoring.example_scores(model, mt.tokenizer, REMEDI_EXAMPLES, "good", 64, device, 8)

    before = scores(trainable.model)
    assert torch.equal(before, scores(mt.model))  # a new editor starts at no edit
    optimizer = torch.optim.Adam(trainable.parameters, lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        scoring.training_loss(
            trainable.model, mt.tokenizer, REMEDI_EXAMPLES, "good", 64, device
        ).backward()
        optimizer.step()
    after = scores(trainable.model)
    threshold = canonical.CANONICAL_TASKS["toy_works_for"].threshold
    assert (after <= threshold).sum() > (before <= threshold).sum()
    assert bool((after < before - 1.0).all())
    assert all(p.grad is None for p in mt.model.parameters())  # the LM stays frozen

    # The trained editor, saved and named in the settings, edits the same way.
    edited_model = trainable.model
    assert isinstance(edited_model, EditedModel)
    editors.save_editor(edited_model.editor, tmp_path / "editor")
    reloaded = remedi_trainable(
        mt,
        "toy_works_for",
        REMEDI_EXAMPLES,
        MethodSettings(name="remedi", remedi_editor=str(tmp_path / "editor")),
        False,
    )
    assert torch.equal(scores(reloaded.model), after)

    # A prompt mentioning no edited entity, alone and batched with an edited one: its logits
    # are the unedited model's exactly (nothing is added to its row).
    with torch.no_grad():
        for prompts in (["Dee Fox works for"], ["Bo Lee works for", "Dee Fox works for"]):
            inputs = _remedi_inputs(mt, prompts)
            edited, original = trainable.model(**inputs).logits, mt.model(**inputs).logits
            assert torch.equal(edited[-1], original[-1])
            if len(prompts) == 2:
                assert not torch.equal(edited[0], original[0])


REMEDI_TASKS = {
    "country_capital": True,
    "company_ceo": True,
    "stereoset": True,
    # No subject field: pair tasks about professions and verbs, and temporal (its entity_string
    # is a Wikipedia URL, not a mention).
    "temporal": False,
    "pronoun_gender_bias": False,
    "verb_conjugation": False,
}


@pytest.mark.shared_data
@pytest.mark.parametrize("task", sorted(REMEDI_TASKS))
def test_remedi_runs_on_tasks_with_subjects_and_refuses_the_others(
    tiny_model_dir: Path, tmp_path: Path, task: str
):
    config = _tiny_config(
        tiny_model_dir, tmp_path, task, method={"name": "remedi", "remedi_layer": 0}
    )
    if not REMEDI_TASKS[task]:
        with pytest.raises(errors.UsageError, match=f"task {task} cannot use method remedi"):
            canon.run_experiment(config)
        return
    result = canon.run_experiment(config)
    assert [stats.epoch for stats in result.epochs] == [0, 1]
    for stats in result.epochs:
        losses = (stats.general_loss, stats.targeted_loss, stats.hard_negative_loss)
        assert all(torch.isfinite(torch.tensor(losses)))


def write_works_for_data(root: Path, examples: list[canonical.CanonicalExample]) -> Path:
    """The toy_works_for task's validation files under ``root``: ``examples`` to train on, an
    evaluation prompt per example, one hard negative, one unconditional text, and general texts
    that mention nobody edited."""
    split = root / "toy_works_for" / "split"
    split.mkdir(parents=True)
    lines: dict[str, list[dict[str, Any]]] = {
        "toy_works_for_train": [
            {"prefix": e.prefix, "suffix": e.suffix, "entity": e.subject, "employer": e.suffix}
            for e in examples
        ],
        "toy_works_for_eval": [
            {
                "prefix": f"Then {e.subject}",
                "suffix": e.suffix,
                "entity": "x",
                "employer": "x",
            }
            for e in examples
        ],
        "toy_works_for_hard_neg": [
            {"prefix": "Bo Lee lives in", "suffix": " Oslo", "entity": "Bo Lee"}
        ],
        "toy_works_for_unconditional": [{"text": "Ann Smith works for Toyota."}],
    }
    for stem, rows in lines.items():
        (split / f"{stem}-val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    general = "".join(
        json.dumps({"text": t}) + "\n" for t in ("Dee Fox lives in Rome.", "It rains.")
    )
    for name in ("val100-val.jsonl", "val100-short.jsonl"):
        (root / name).write_text(general)
    return root


def test_a_remedi_experiment_runs_and_leaves_unmentioned_text_alone(
    tiny_model_dir: Path, tmp_path: Path
):
    root = write_works_for_data(tmp_path / "data", REMEDI_EXAMPLES)
    config = _tiny_config(
        tiny_model_dir,
        tmp_path / "out",
        "toy_works_for",
        data_root=str(root),
        method={"name": "remedi", "remedi_layer": 0},
        training={"epochs": 2, "learning_rate": 0.1},
    )
    result = canon.run_experiment(config)
    assert [stats.epoch for stats in result.epochs] == [0, 1, 2]
    first, last = result.epochs[0], result.epochs[-1]
    # The general texts mention no edited person: the edited model scores them exactly the same.
    assert last.general_loss == first.general_loss
    assert last.targeted_loss != first.targeted_loss
    assert last.hard_negative_loss != first.hard_negative_loss

    # A given editor with no training: evaluated once, as "epoch" 1 (a random editor moves text).
    from remedi import editors, models

    mt = models.load_model(str(tiny_model_dir), device="cpu")
    editors.save_editor(editors.new_editor("linear", mt, 0), tmp_path / "editor")
    given = canon.with_overrides(
        config,
        {
            "method.remedi_editor": str(tmp_path / "editor"),
            "training.epochs": 0,
            "output_dir": str(tmp_path / "given"),
        },
    )
    given_result = canon.run_experiment(given)
    assert [stats.epoch for stats in given_result.epochs] == [0, 1]
    assert given_result.epochs[0] == first
    assert given_result.epochs[1].targeted_loss != first.targeted_loss
