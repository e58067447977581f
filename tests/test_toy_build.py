"""Building toy worlds: files, formats, the LM's knowledge, reuse, determinism, architectures."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from remedi import errors, io
from remedi.toy import export
from remedi.toy.build import (
    ToyWorldConfig,
    build_toy_world,
    default_config,
    ensure_toy_world,
    load_world,
    toy_world_paths,
)
from remedi.toy.lm import LMSettings, next_token_logprobs, value_token_id
from remedi.toy.world import RELATIONS
from tests.toy_fixtures import BuiltToyWorld, toy_dirs

# Measured on the seed-0 small world: 100% on training templates (bar set with margin).
SMALL_WORLD_MIN_RECALL = 0.9
# Measured on the seed-0 small world: 64% on held-out templates, which the LM never saw; a
# relation has 10-12 values, so choosing among them at random scores at most 10%.
SMALL_WORLD_MIN_HELDOUT_RECALL = 0.4


def _load(world: BuiltToyWorld):
    model = transformers.AutoModelForCausalLM.from_pretrained(world.paths.model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(world.paths.model_dir)
    return model, tokenizer


def test_small_world_is_built_from_its_config(small_world: BuiltToyWorld) -> None:
    # Its build time is printed by `invoke x.toy.build --small` and kept in build_report.json;
    # speed is measured there, not asserted here.
    assert small_world.paths.is_built()
    config = default_config("toy-small")
    report = small_world.report
    assert report["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    world = report["world"]
    assert world["num_entities"] == config.num_entities == 40
    assert world["num_test_entities"] == round(config.test_fraction * config.num_entities)
    assert world["num_train_entities"] + world["num_test_entities"] == config.num_entities
    assert world["num_relations"] == len(RELATIONS)
    assert world["num_facts"] == config.num_entities * len(RELATIONS)
    # One CounterFact record per fact, before the LM's unknown facts are dropped.
    assert report["counterfact"]["records"] == world["num_facts"]
    assert report["model"]["num_layers"] == config.lm.num_layers
    assert report["model"]["hidden_size"] == config.lm.hidden_size
    assert report["training"]["epochs_completed"] == config.lm.epochs


def test_small_world_lm_knows_its_facts(small_world: BuiltToyWorld) -> None:
    recall = small_world.report["recall"]
    assert recall["train_templates"] >= SMALL_WORLD_MIN_RECALL, recall
    assert recall["heldout_templates"] >= SMALL_WORLD_MIN_HELDOUT_RECALL, recall
    assert set(recall["by_relation"]) == {"P27", "P1412", "P551", "P106", "P108"}


def test_saved_model_and_tokenizer_load_with_auto_classes(small_world: BuiltToyWorld) -> None:
    model, tokenizer = _load(small_world)
    assert model.config.model_type == "gpt2"
    assert model.config.n_positions >= 128
    assert tokenizer.pad_token_id is not None
    text = "Mira lives in Paris"
    start, end = tokenizer(text, return_offsets_mapping=True)["offset_mapping"][-1]
    assert text[start:end].strip() == "Paris"


def test_counterfact_export_is_rome_format_and_known_to_the_lm(small_world: BuiltToyWorld) -> None:
    records = io.read_json(small_world.paths.counterfact_file)
    export.validate_counterfact_records(records)
    counts = small_world.report["counterfact"]
    assert counts["kept"] == len(records) > 0
    assert counts["kept"] + counts["dropped"] == counts["records"]

    model, tokenizer = _load(small_world)
    prompts = [
        r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]) for r in records
    ]
    logprobs = next_token_logprobs(model, tokenizer, prompts)
    true_ids = [
        value_token_id(tokenizer, r["requested_rewrite"]["target_true"]["str"]) for r in records
    ]
    new_ids = [
        value_token_id(tokenizer, r["requested_rewrite"]["target_new"]["str"]) for r in records
    ]
    rows = torch.arange(len(records))
    assert (logprobs[rows, true_ids] > logprobs[rows, new_ids]).all()


def test_consistency_companions_are_in_rome_formats(small_world: BuiltToyWorld) -> None:
    snippets = io.read_json(small_world.paths.attribute_snippets_file)
    vocabulary = io.read_json(small_world.paths.tfidf_vocab_file)
    idf = np.load(small_world.paths.idf_file)
    assert idf.ndim == 1 and idf.dtype == np.float64
    assert sorted(vocabulary.values()) == list(range(len(idf)))
    world = load_world_from(small_world)
    # The TF-IDF tables are the statistics of the world's biographies (exact: same computation).
    expected_idf, expected_vocabulary = export.tfidf_statistics(
        [text for texts in world.biographies.values() for text in texts]
    )
    assert vocabulary == expected_vocabulary
    assert np.array_equal(idf, expected_idf)
    names = {e.name for e in world.entities}
    assert snippets and all(s["name"] in names for entry in snippets for s in entry["samples"])


def load_world_from(built: BuiltToyWorld):
    with toy_dirs(built.models_dir, built.data_dir):
        return load_world(built.paths.name)


def test_a_second_call_reuses_the_build(small_world: BuiltToyWorld) -> None:
    report_before = small_world.paths.report_file.stat().st_mtime_ns
    weights = next(small_world.paths.model_dir.glob("*.safetensors"))
    weights_before = weights.stat().st_mtime_ns
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        paths = ensure_toy_world("toy-small")
        assert ensure_toy_world("toy-small", seed=0) == paths
    assert paths == small_world.paths
    assert small_world.paths.report_file.stat().st_mtime_ns == report_before
    assert weights.stat().st_mtime_ns == weights_before


def test_a_built_model_without_its_data_is_refused_not_rebuilt(
    small_world: BuiltToyWorld, tmp_path: Path
) -> None:
    """REMEDI_MODELS_DIR set without REMEDI_DATA_DIR used to delete and rebuild the model."""
    weights = next(small_world.paths.model_dir.glob("*.safetensors"))
    weights_before = weights.read_bytes()
    with (
        toy_dirs(small_world.models_dir, tmp_path / "elsewhere"),
        pytest.raises(errors.UsageError, match="REMEDI_DATA_DIR") as raised,
    ):
        ensure_toy_world("toy-small")
    assert "counterfact.json" in str(raised.value)
    assert weights.read_bytes() == weights_before
    assert small_world.paths.is_built()


def _quick_config(name: str, epochs: int = 1) -> ToyWorldConfig:
    config = default_config(name)
    lm = dataclasses.replace(config.lm, num_layers=2, hidden_size=32, num_heads=2, epochs=epochs)
    return dataclasses.replace(config, num_entities=12, lm=lm)


def test_build_is_deterministic_for_a_seed(tmp_path) -> None:
    outputs = []
    for run in ("a", "b"):
        with toy_dirs(tmp_path / run / "models", tmp_path / run / "data"):
            paths = toy_world_paths("toy-small")
            build_toy_world(paths, seed=5, config=_quick_config("toy-small", epochs=2))
            model = transformers.AutoModelForCausalLM.from_pretrained(paths.model_dir)
            outputs.append(
                (
                    paths.world_file.read_text(),
                    paths.counterfact_file.read_text(),
                    (paths.model_dir / "tokenizer.json").read_text(),
                    model.state_dict(),
                )
            )
    (world_a, records_a, tokenizer_a, weights_a), (world_b, records_b, tokenizer_b, weights_b) = (
        outputs
    )
    assert world_a == world_b
    assert records_a == records_b
    assert tokenizer_a == tokenizer_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert json.loads(world_a)["seed"] == 5


@pytest.mark.parametrize(
    ("arch", "model_type"),
    [("gpt2", "gpt2"), ("gptj", "gptj"), ("neox", "gpt_neox"), ("llama", "llama")],
)
def test_each_architecture_builds_and_loads(tmp_path, arch: str, model_type: str) -> None:
    name = f"toy-small-{arch}" if arch != "gpt2" else "toy-small"
    with toy_dirs(tmp_path / "models", tmp_path / "data"):
        paths = ensure_toy_world(name, config=_quick_config(name))
        report = io.read_json(paths.report_file)
    assert report["arch"] == arch
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(paths.model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(paths.model_dir)
    assert model.config.model_type == model_type
    positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    assert positions >= 128
    inputs = tokenizer(["Kela Dor lives in the city of"], return_tensors="pt")
    generated = model.generate(
        **inputs,
        max_new_tokens=3,
        min_new_tokens=3,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_unknown_architecture_teaches() -> None:
    with pytest.raises(ValueError, match="unknown toy world 'toy-bert'"):
        toy_world_paths("toy-bert")
    with pytest.raises(ValueError, match="choose one of"):
        from remedi.toy.lm import build_model
        from remedi.toy.tokenizer import train_bpe_tokenizer

        build_model(LMSettings(arch="bert"), train_bpe_tokenizer(["a b c"] * 3, 300), seed=0)


def test_another_seed_rebuilds_and_rebuild_forces(tmp_path) -> None:
    config = _quick_config("toy-small")
    with toy_dirs(tmp_path / "models", tmp_path / "data"):
        paths = ensure_toy_world("toy-small", seed=1, config=config)
        first = paths.counterfact_file.read_text()
        ensure_toy_world("toy-small", seed=2, config=config)
        assert io.read_json(paths.report_file)["seed"] == 2
        assert paths.counterfact_file.read_text() != first
        mtime = paths.report_file.stat().st_mtime_ns
        ensure_toy_world("toy-small", rebuild=True, config=config)
        assert paths.report_file.stat().st_mtime_ns != mtime
        assert io.read_json(paths.report_file)["seed"] == 0


def test_build_script_reports_a_built_world(small_world: BuiltToyWorld) -> None:
    environment = {
        **os.environ,
        "REMEDI_MODELS_DIR": str(small_world.models_dir),
        "REMEDI_DATA_DIR": str(small_world.data_dir),
    }
    result = subprocess.run(
        [sys.executable, "-m", "scripts.build_toy", "--small", "--seed", "0"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "toy world 'toy-small': 40 entities" in result.stdout
    assert "% on training templates" in result.stdout
    assert "training toy" not in result.stderr, "the world should have been reused, not rebuilt"
