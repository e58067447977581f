"""The toy world's feature norms in McRae's format, read by the real file's loader."""

from __future__ import annotations

import pytest

from remedi import data, env
from remedi.data import mcrae
from remedi.toy import mcrae as toy_mcrae
from remedi.toy.build import ensure_toy_mcrae, toy_world_paths
from remedi.toy.world import COUNTRY_LANGUAGE, generate_world
from tests.toy_fixtures import BuiltToyWorld, small_world, toy_dirs  # noqa: F401


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0, num_entities=60)


@pytest.mark.shared_data
def test_toy_norms_have_mcraes_exact_header():
    real = env.shared_data_dir() / "mcrae" / mcrae.MCRAE_FILE_NAME
    with real.open(encoding="utf-8", errors="replace") as handle:
        header = tuple(handle.readline().rstrip("\r\n").split("\t"))
    assert header == toy_mcrae.MCRAE_HEADER


def test_the_mcrae_loader_reads_every_person_and_fact_of_the_toy_norms(world, tmp_path):
    file = toy_mcrae.write_mcrae_norms(world, tmp_path / "norms.txt")
    norms = mcrae.read_mcrae_norms(file)
    assert norms.rows == len(toy_mcrae.FEATURE_TEMPLATES) * len(world.entities)
    assert norms.dropped == {}
    person = world.entities[0]
    features = norms.probabilities[person.name]
    country, language = person.facts["P27"], person.facts["P1412"]
    assert {f"comes from {country}", f"speaks {language}", f"a {person.facts['P106']}"} <= set(
        features
    )
    assert all(0 < p <= 1 for p in features.values())
    assert file.read_text() == toy_mcrae.norms_text(toy_mcrae.norm_rows(world))  # deterministic


def test_nationality_and_language_co_occur_as_the_world_implies(world, tmp_path):
    file = toy_mcrae.write_mcrae_norms(world, tmp_path / "norms.txt")
    samples = list(data.load_dataset("mcrae", file=file))
    pairs = {(s["context_feature"], s["prompt_feature"]) for s in samples}
    for country, language in COUNTRY_LANGUAGE.items():
        if world.entities_with("P27", country):
            assert (f"comes from {country}", f"speaks {language}") in pairs
            assert (f"speaks {language}", f"comes from {country}") in pairs
    for sample in samples:
        context, prompt = sample["context_feature"], sample["prompt_feature"]
        if context.startswith("comes from ") and prompt.startswith("speaks "):
            assert COUNTRY_LANGUAGE[context.removeprefix("comes from ")] == prompt[7:]
        concept = next(e for e in world.entities if e.name == sample["concept"])
        assert concept.facts["P27"] not in context and concept.facts["P27"] not in prompt
    sample = next(s for s in samples if s["context_feature"].startswith("comes from "))
    assert sample["context"] == f"A {sample['entity']} {sample['context_feature']}."


@pytest.mark.slow
def test_mcrae_entailment_on_the_small_toy_world_end_to_end(
    small_world: BuiltToyWorld,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    from scripts import eval_entailment, train_editors

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    with toy_dirs(small_world.models_dir, tmp_path / "data"):
        # The built world's data, copied without its norms, so that the norms are written on
        # demand here (the model's data must all be there: a model without it is refused).
        paths = toy_world_paths("toy-small")
        paths.data_dir.mkdir(parents=True)
        for source in small_world.paths.data_files():
            (paths.data_dir / source.name).write_bytes(source.read_bytes())
        assert not paths.mcrae_file.exists()
        file = ensure_toy_mcrae("toy-small")
        assert file == paths.mcrae_file and file.read_text().startswith("Concept\tFeature\t")
        common = ["-m", "toy-small", "--device", "cpu"]
        argv = ["-n", "mcrae", "-d", "mcrae", "-l", "0", "--dataset-file", str(file)]
        train_editors.main([*argv, "--max-epochs", "1", "--test-size", "0.3", *common])
        run = str(tmp_path / "results" / "mcrae")
        assert eval_entailment.main(["-n", "ent", "-e", run, "--max-samples", "8", *common]) == 0
    out = capsys.readouterr().out
    for row in ("No Edit", "Prefix", "REMEDI"):
        assert f"| {row} |" in out
