"""The one-call API on the small toy world: edit, generate, probe, errors, and the README snippet.

One editor is trained per module exactly as
``invoke x.train.counterfact --model toy-small --prompt rewrite`` trains it (the task's flags, seed 0,
~15 s), under the task's run name, so the README snippet runs here unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import remedi
from remedi import api, editors, models, precompute, settings, training
from remedi.toy.build import load_world
from scripts import train_editors
from tests.conftest import tiny_gpt2
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of
from tests.toy_fixtures import BuiltToyWorld, small_world, toy_dirs  # noqa: F401

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_NAME = "editors_counterfact_toy-small"  # what `invoke x.train.counterfact` names the run


@dataclass(frozen=True)
class TrainedRun:
    world: BuiltToyWorld
    results_dir: Path
    run_dir: Path


@pytest.fixture(scope="module")
def trained(
    small_world: BuiltToyWorld,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> TrainedRun:
    results_dir = tmp_path_factory.mktemp("api-results")
    argv = [
        *("-n", RUN_NAME, "-m", "toy-small", "-d", "counterfact", "-l", "0"),
        *("--dataset-file", str(small_world.paths.counterfact_file)),
        *settings.training_flags("toy-small", "counterfact"),
        # As the README says: rewrite prompts, which the toy LM knows (its paraphrase prompts
        # are templates held out from its training), so the unedited LM never prefers the new value.
        *("--counterfact-prompt", "rewrite"),
    ]
    args = train_editors.run_args(train_editors.parse_args(argv))
    args.device = "cpu"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REMEDI_RESULTS_DIR", str(results_dir))
        with toy_dirs(small_world.models_dir, small_world.data_dir):
            run_dir = training.train_run(args)
    return TrainedRun(small_world, results_dir, run_dir)


@pytest.fixture
def world_env(trained: TrainedRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point remedi.env at the small world and the trained run for one test."""
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(trained.results_dir))
    with toy_dirs(trained.world.models_dir, trained.world.data_dir):
        yield


@pytest.fixture(scope="module")
def bench(trained: TrainedRun) -> api.Workbench:
    with toy_dirs(trained.world.models_dir, trained.world.data_dir):
        return remedi.load(editor=trained.run_dir)


def held_out_samples(trained: TrainedRun) -> list[dict]:
    """CounterFact samples of entities the editor never trained on (test and validation)."""
    samples: list[dict] = []
    for split in ("test", "validation"):
        samples += list(training.load_run_samples(trained.run_dir, split))
    return samples


# ---------------------------------------------------------------------------------------
# Editing.


def test_edit_makes_the_new_target_likelier_for_held_out_entities(trained, bench):
    samples = held_out_samples(trained)
    assert len(samples) == 40
    wins = {"attribute": 0, "context": 0}
    unedited = 0
    for sample in samples:
        for key in wins:  # "is Brazil", or CounterFact's "The home country of X is Brazil"
            result = bench.edit(
                sample["entity"],
                sample[key],
                prompt=sample["prompt"],
                targets=[sample["target_mediated"], sample["target_unmediated"]],
            )
            new, true = result.targets
            wins[key] += new.after > true.after
            unedited += new.before > true.before
    # Measured with the task's settings over seeds 0, 1, 2: 28, 29, 23 of 40 from the attribute
    # and 27, 29, 22 from CounterFact's context; the unedited LM prefers the new target in none.
    assert unedited == 0
    assert wins["attribute"] >= 20 and wins["context"] >= 20
    # From CounterFact's context the edit is training's own efficacy measure (the toy targets
    # are one token, so whole-target and first-token probabilities rank alike).
    inputs = precompute.editor_inputs(bench.mt, samples, [bench.layer])
    efficacy, _ = training.efficacy(bench.mt, bench.editor, inputs)
    assert wins["context"] == round(efficacy * len(samples))


def test_unedited_probabilities_are_a_plain_forward_pass(bench):
    entity, prompt = "Geikein Supak", "Geikein Supak is employed as a"
    result = bench.edit(entity, "works as a pilot", prompt=prompt, targets=["pilot", "writer"])
    tokenizer, model = bench.mt.tokenizer, bench.mt.model
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    probabilities = torch.softmax(logits.double(), dim=-1)
    expected = probabilities.topk(len(result.top_before))
    assert [item.token for item in result.top_before] == [
        tokenizer.decode([token_id]) for token_id in expected.indices.tolist()
    ]
    # Forward passes of the same prompt alone and in a right-padded batch differ only by
    # summation order; probabilities are judged on the scale of 1.
    precision = precision_of(model)
    assert_equal_in_exact_arithmetic(
        [item.probability for item in result.top_before], expected.values, precision, scale=1.0
    )
    for target in result.targets:
        (token_id,) = tokenizer(" " + target.target)["input_ids"]  # one token in the toy vocab
        assert_equal_in_exact_arithmetic(
            target.before, probabilities[token_id], precision, scale=1.0
        )
    # The edit moved them, and left no hook behind.
    assert result.targets[0].after > 100 * result.targets[0].before
    with torch.no_grad():
        again = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    assert torch.equal(again, logits)


def test_results_round_trip_through_json(bench):
    result = bench.edit("Geikein Supak", "works as a pilot", targets=["pilot"], top_k=3)
    assert result.prompt == "Geikein Supak is"
    assert len(result.top_before) == len(result.top_after) == 3
    assert api.EditResult.from_json(result.to_json()) == result
    probe = bench.probe("Geikein Supak", ["works as a pilot", "works as a writer"])
    assert api.ProbeResult.from_json(probe.to_json()) == probe


def test_a_context_sentence_works_like_its_attribute(bench):
    prompt = "Geikein Supak is employed as a"
    from_attribute = bench.edit("Geikein Supak", "works as a pilot", prompt=prompt)
    from_context = bench.edit("Geikein Supak", "Geikein Supak works as a pilot", prompt=prompt)
    assert from_context.attribute == from_attribute.attribute == "works as a pilot"
    assert from_context.context == from_attribute.context == "Geikein Supak works as a pilot"
    assert from_context.top_after == from_attribute.top_after


# ---------------------------------------------------------------------------------------
# Generating.


def test_generation_is_deterministic_for_a_seed_and_carries_the_edit(bench):
    entity, prompt = "Geikein Supak", "Geikein Supak is employed as a"
    state = torch.get_rng_state()
    sampled = [bench.generate(entity, "works as a pilot", prompt=prompt, seed=3) for _ in "ab"]
    assert sampled[0] == sampled[1]
    assert sampled[0].startswith(prompt)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched

    greedy = bench.generate(entity, "works as a pilot", prompt=prompt, greedy=True)
    unedited = bench.generate(entity, "works as a pilot", prompt=prompt, greedy=True, edited=False)
    assert greedy.startswith(f"{prompt} pilot")
    assert unedited.startswith(f"{prompt} writer")  # the toy world's fact


# ---------------------------------------------------------------------------------------
# Probing.


def test_probe_ranks_the_true_attribute_above_chance(trained, bench, world_env):
    world = load_world("toy-small")
    facts = {entity.name: entity.facts for entity in world.entities}
    entities = sorted({sample["entity"] for sample in held_out_samples(trained)})
    reciprocal_ranks = []
    for entity in entities:
        for relation in world.relations:
            template = relation.train_templates[0]
            candidates = [f"{template.format(entity)} {value}" for value in relation.values]
            result = bench.probe(entity, candidates)
            ranked = [score.attribute for score in result.scores]
            truth = f"{template.format(entity)} {facts[entity][relation.relation_id]}"
            reciprocal_ranks.append(1 / (ranked.index(truth) + 1))
    assert len(reciprocal_ranks) == 40
    mean_reciprocal_rank = sum(reciprocal_ranks) / len(reciprocal_ranks)
    # 12 candidates per relation: chance gives 0.26 (sd 0.04 over 40 probes). Measured 0.44
    # (seed 0), 0.52 and 0.54 (seeds 1, 2) with the task's settings.
    assert mean_reciprocal_rank >= 0.35


def test_probe_reports_both_similarities_and_ranks_by_the_one_asked(bench):
    attributes = ["works as a pilot", "works as a writer", "works as a baker"]
    by_cosine = bench.probe("Geikein Supak", attributes)
    by_dot = bench.probe("Geikein Supak", attributes, similarity="dot")
    assert by_cosine.similarity == "cosine" and by_dot.similarity == "dot"
    assert by_cosine.entity_token == "average"  # the toy editor reads all entity tokens
    cosines = [score.cosine for score in by_cosine.scores]
    dots = [score.dot for score in by_dot.scores]
    assert cosines == sorted(cosines, reverse=True)
    assert dots == sorted(dots, reverse=True)
    assert sorted(by_cosine.scores, key=lambda s: s.attribute) == sorted(
        by_dot.scores, key=lambda s: s.attribute
    )
    # The score is the editor's direction against the entity's state: check one by hand.
    direction = bench.direction("Geikein Supak", "works as a pilot")
    state = bench._entity_states("Geikein Supak", "Geikein Supak", [0])[0]["average"]
    pilot = next(score for score in by_dot.scores if score.attribute == "works as a pilot")
    # Same float32 vectors, summed in another order by a matrix product vs a dot product.
    assert pilot.dot == pytest.approx(float(direction.float() @ state), rel=1e-5)


# ---------------------------------------------------------------------------------------
# Errors that teach.


def test_usage_errors_name_the_problem_and_the_fix(bench):
    with pytest.raises(ValueError, match=r"layer 2 is out of range .* \(0..1\)"):
        bench.probe("Alice Smith", ["works as a pilot"], entity_layer=2)
    with pytest.raises(ValueError) as raised:
        bench.edit("Alice Smith", "works as a pilot", prompt="Alice is employed as a")
    message = str(raised.value)
    assert "'Alice is employed as a'" in message and "'Alice Smith'" in message
    assert "must contain 'Alice Smith' exactly" in message
    with pytest.raises(ValueError, match="does not mention the entity"):
        bench.probe("Alice Smith", ["works as a pilot"], prompt="alice smith")
    with pytest.raises(ValueError, match="says nothing about 'Alice Smith'"):
        bench.edit("Alice Smith", "Alice Smith", prompt="Alice Smith is")


@pytest.mark.usefixtures("world_env")
def test_load_errors_say_what_to_do(trained, tmp_path, monkeypatch, tokenizer):
    with pytest.raises(FileNotFoundError, match=r"no editor at .*pass a training run directory"):
        remedi.load(editor=tmp_path / "no_such_run")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither a training run"):
        remedi.load(editor=empty)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelLoadError, match="cannot load model 'nobody/no-such-model'"):
        remedi.load(editor=RUN_NAME, model="nobody/no-such-model")
    with pytest.raises(models.ModelLoadError, match="no model directory"):
        remedi.load(editor=RUN_NAME, model=str(tmp_path / "no_model"))

    mt = models.load_model("toy-small")
    with pytest.raises(ValueError, match=r"layer 5 is out of range .* 2 layers \(0..1\)"):
        remedi.load(editor=RUN_NAME, model=mt, layer=5)
    # Without a loaded model, a missing editor is reported before any model loads.
    with pytest.raises(FileNotFoundError, match=r"no finished linear editor for layer 5 .*"):
        remedi.load(editor=RUN_NAME, layer=5)
    with pytest.raises(FileNotFoundError, match=r"finished: \{'linear': \[0\]\}"):
        remedi.load(editor=RUN_NAME, layer=1)
    with pytest.raises(FileNotFoundError, match="no finished mlp editor for any layer"):
        remedi.load(editor=RUN_NAME, editor_type="mlp")
    with pytest.raises(ValueError, match="layer -1 is negative"):
        remedi.load(editor=RUN_NAME, layer=-1)
    editor_dir = trained.run_dir / "linear" / "0"
    with pytest.raises(ValueError, match="edits layer 0, not layer 1"):
        remedi.load(editor=editor_dir, layer=1)

    other = models.ModelAndTokenizer(tiny_gpt2(tokenizer), tokenizer, name="toy-small")
    with pytest.raises(ValueError, match=r"saved for hidden size 64 .* has hidden size 32"):
        remedi.load(editor=editor_dir, model=other)


def test_load_accepts_a_run_name_a_run_directory_or_an_editor_directory(trained, world_env):
    by_name = remedi.load(editor=RUN_NAME)
    by_editor_dir = remedi.load(editor=trained.run_dir / "linear" / "0", model=by_name.mt)
    assert by_name.source == by_editor_dir.source == trained.run_dir / "linear" / "0"
    assert by_name.layer == 0 and by_name.mt.name == "toy-small"
    for name, tensor in by_name.editor.state_dict().items():
        assert torch.equal(tensor, by_editor_dir.editor.state_dict()[name])
    assert isinstance(by_name.editor, editors.LinearEditor)


# ---------------------------------------------------------------------------------------
# The package surface and the README.


def test_import_remedi_stays_light_and_exports_the_api():
    assert remedi.load is api.load and remedi.EditResult is api.EditResult
    assert set(remedi.__all__) >= {"load", "Workbench", "EditResult", "ProbeResult"}
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        remedi.nothing_here  # noqa: B018
    code = "import sys, remedi; assert 'torch' not in sys.modules, 'import remedi loaded torch'"
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr


def readme_python_api_snippet() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    sections = re.split(r"^## ", readme, flags=re.MULTILINE)
    titles = [section.split("\n", 1)[0].strip() for section in sections]
    assert titles.index("Python API") == titles.index("Set-up") + 1
    section = sections[titles.index("Python API")]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the Python API section holds exactly one python block"
    return blocks[0]


@pytest.mark.usefixtures("world_env")
def test_the_readme_snippet_runs(capsys):
    snippet = readme_python_api_snippet()
    exec(compile(snippet, "README.md (Python API)", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "edit 'Geikein Supak': 'works as a pilot' (layer 0)" in printed
    assert "Geikein Supak is employed as a pilot" in printed
    assert "probe 'Geikein Supak' on its own (layer 0, by cosine)" in printed
