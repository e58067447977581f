"""Edit modes, checkpoints and resume, REMEDI's directions together, toy tasks, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors
import safetensors.torch
import torch
from matplotlib.colors import to_hex

from remedi import corpora, data, env, errors, evaluation, io, models
from remedi.data import general_tasks as tasks
from remedi.evaluation.general import abilities, harm, harm_report
from remedi.methods import base, common, registry, rome
from remedi.report import figures
from remedi.toy import general as toy_general
from remedi.toy.world import World, generate_world
from tests.conftest import weighty_gpt2
from tests.toy_fixtures import BuiltToyWorld, toy_dirs

SUBJECTS = ("Mira Talovan", "Kelo Vantri", "Xavi Bornadel")
TARGETS = ("Oslo", "Paris", "Lisbon")


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


def edits() -> list[harm.HarmEdit]:
    return [
        harm.HarmEdit(
            common.EditRequest(f"{subject} lives in", subject, target),
            (f"{subject} lives in the city of",),
            ("Barack Obama was born in",),
        )
        for subject, target in zip(SUBJECTS, TARGETS, strict=True)
    ]


class CountingRome:
    """ROME (C = I, no prefixes) that counts the requests it is given."""

    def __init__(self) -> None:
        self.calls = 0
        self.hparams = rome.RomeHparams(layer=0, context_template_lengths=[], mom2_adjustment=False)

    def __call__(self, mt: models.ModelAndTokenizer, requests) -> dict[str, torch.Tensor]:
        self.calls += len(requests)
        new: dict[str, torch.Tensor] = {}
        for request in requests:  # as a batch: each update on the same unedited weights
            for name, value in rome.edit(mt, request, self.hparams, None, ["{}"]).items():
                base = mt.model.get_parameter(name)
                new[name] = new.get(name, base) + (value - base)
        return new


TASK_ITEMS = {"sentiment": [tasks.SentimentItem("a charming journey", True)] * 2}


def settings(mode: str, **kwargs) -> harm.HarmSettings:
    return harm.HarmSettings("rome", mode, [1, 3], protocols=("loglik",), **kwargs)


def test_sequential_edits_are_checkpointed_resumed_and_undone(mt, tmp_path):
    before = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    editor = CountingRome()
    method = base.FunctionEditor("rome", editor, batches=False)
    results = harm.run_harm(
        mt, method, edits(), TASK_ITEMS, settings("instance-sequential"), tmp_path
    )
    assert [r.num_edits for r in results] == [0, 1, 3] and editor.calls == 3
    assert results[0].edits is None and results[1].edits is not None
    # The edit is in the model while scoring: the tasks' numbers were measured on new weights.
    state = safetensors.torch.load_file(tmp_path / "state_1.safetensors")
    assert list(state) == ["transformer.h.0.mlp.c_proj.weight"]
    assert not torch.equal(
        state["transformer.h.0.mlp.c_proj.weight"], before["transformer.h.0.mlp.c_proj.weight"]
    )
    assert [t.task for t in results[2].tasks] == ["sentiment"]
    # Sequential edits accumulate: the third checkpoint's weights hold more than the first's.
    later = safetensors.torch.load_file(tmp_path / "state_3.safetensors")
    name = "transformer.h.0.mlp.c_proj.weight"
    assert not torch.equal(later[name], state[name])
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint_3.json", "state_3.safetensors"}
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name

    # A longer run resumes: the finished checkpoints are read, only edit 4 is new.
    resumed = harm.run_harm(
        mt,
        method,
        edits() + edits()[:1],
        TASK_ITEMS,
        harm.HarmSettings("rome", "instance-sequential", [1, 3, 4], protocols=("loglik",)),
        tmp_path,
    )
    assert editor.calls == 4
    assert resumed[2].to_dict() == results[2].to_dict()
    assert json.loads((tmp_path / "checkpoint_4.json").read_text())["num_edits"] == 4


def test_a_run_from_before_safetensors_resumes_from_its_pt_states(mt, tmp_path):
    before = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    method = base.FunctionEditor("rome", CountingRome(), batches=False)
    results = harm.run_harm(
        mt, method, edits(), TASK_ITEMS, settings("instance-sequential"), tmp_path
    )
    # As an older version left the run: the same weights, pickled by torch.save.
    for number in (1, 3):
        new = tmp_path / f"state_{number}.safetensors"
        torch.save(safetensors.torch.load_file(new), tmp_path / f"state_{number}.pt")
        new.unlink()
    counting = CountingRome()
    resumed = harm.run_harm(
        mt,
        base.FunctionEditor("rome", counting, batches=False),
        edits() + edits()[:1],
        TASK_ITEMS,
        harm.HarmSettings("rome", "instance-sequential", [1, 3, 4], protocols=("loglik",)),
        tmp_path,
    )
    assert counting.calls == 1  # only edit 4 is new
    assert resumed[2].to_dict() == results[2].to_dict()
    for name, parameter in mt.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    # Anything but a dict of tensors is refused, naming the file and the fix.
    torch.save(["not", "weights"], tmp_path / "state_4.pt")
    (tmp_path / "state_4.safetensors").unlink()
    with pytest.raises(errors.FileFormatError, match=r"state_4\.pt is not a dict of tensors"):
        harm.run_harm(
            mt,
            method,
            edits() + edits()[:1],
            TASK_ITEMS,
            harm.HarmSettings("rome", "instance-sequential", [4], protocols=("loglik",)),
            tmp_path,
        )


def test_batch_single_starts_each_checkpoint_from_the_unedited_model(mt, tmp_path):
    editor = CountingRome()
    method = base.FunctionEditor("batch-rome", editor, batches=True)
    harm.run_harm(mt, method, edits(), TASK_ITEMS, settings("batch-single"), tmp_path)
    assert editor.calls == 1 + 3  # all N edits again at each checkpoint


class RecordingEditor:
    """A batching weight edit that records each batch's (subject, target) pairs and nudges the
    first layer's input norm bias."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []

    def __call__(self, mt: models.ModelAndTokenizer, requests) -> dict[str, torch.Tensor]:
        self.batches.append([(request.subject, request.target_new) for request in requests])
        bias = mt.model.get_parameter("transformer.h.0.ln_1.bias")
        return {"transformer.h.0.ln_1.bias": bias + 0.01}


def test_batch_sequential_edits_fixed_batches_and_checkpoints_at_their_multiples(mt, tmp_path):
    six = [
        harm.HarmEdit(common.EditRequest(f"{subject} lives in", subject, target), (), ())
        for subject in SUBJECTS
        for target in TARGETS[:2]
    ]
    pairs = [(edit.request.subject, edit.request.target_new) for edit in six]
    recording = RecordingEditor()
    method = base.FunctionEditor("batch-edit", recording, batches=True)
    run = harm.HarmSettings("memit", "batch-sequential", [2, 4], batch_size=2, protocols=())
    results = harm.run_harm(mt, method, six, {}, run, tmp_path)
    assert [r.num_edits for r in results] == [0, 2, 4]
    assert recording.batches == [pairs[0:2], pairs[2:4]]
    # Resumed from checkpoint 4, the next batch is still edits [4, 6).
    run = harm.HarmSettings("memit", "batch-sequential", [2, 4, 6], batch_size=2, protocols=())
    harm.run_harm(mt, method, six, {}, run, tmp_path)
    assert recording.batches == [pairs[0:2], pairs[2:4], pairs[4:6]]
    # A checkpoint inside a batch is refused, naming multiples to ask for; nothing is edited.
    run = harm.HarmSettings("memit", "batch-sequential", [1, 5], batch_size=2, protocols=())
    with pytest.raises(errors.UsageError, match=r"checkpoints \[1, 5\] would cut a batch") as error:
        harm.run_harm(mt, method, six, {}, run, tmp_path / "cut")
    assert "--edits 2,6" in str(error.value) and "\n" not in str(error.value)
    assert len(recording.batches) == 3
    assert harm.default_checkpoints("batch-sequential", 10) == [10, 50, 100]
    assert harm.default_checkpoints("batch-sequential", 16) == [16, 64, 112]
    assert harm.default_checkpoints("instance-sequential", 16) == [1, 10, 50, 100]


def test_unknown_mode_and_a_method_that_cannot_batch_are_one_line_errors(mt, tmp_path):
    method = base.FunctionEditor("rome", CountingRome(), batches=False)
    with pytest.raises(errors.UsageError, match="unknown edit mode 'parallel'") as error:
        harm.run_harm(mt, method, edits(), TASK_ITEMS, settings("parallel"), tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(errors.UsageError, match="'rome' edits one fact at a time") as error:
        harm.run_harm(mt, method, edits(), TASK_ITEMS, settings("batch-single"), tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(errors.UsageError, match="only 3 edits are available"):
        harm.run_harm(
            mt,
            method,
            edits(),
            TASK_ITEMS,
            harm.HarmSettings("rome", "instance-sequential", [5]),
            tmp_path,
        )


def test_directions_are_added_at_each_edited_entity_mention_and_removed(mt):
    texts = ["Mira Talovan lives in Oslo", "Kelo Vantri and Mira Talovan", "Nobody here"]
    encoded = mt.tokenizer(texts, return_tensors="pt", padding=True, return_offsets_mapping=True)
    offsets, mask = encoded["offset_mapping"], encoded["attention_mask"]
    directions = {"Mira Talovan": torch.ones(32), "Kelo Vantri": -torch.ones(32)}
    recorded = {}

    def record(module, inputs, output):
        recorded["hidden"] = (output[0] if isinstance(output, tuple) else output).clone()

    block = models.resolve_layer(mt.model, 0)
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": mask}
    with torch.no_grad():
        handle = block.register_forward_hook(record)
        mt.model(**inputs)
        handle.remove()
        clean = recorded["hidden"]
        with harm.entity_directions(mt, 0, directions, texts, offsets, mask):
            handle = block.register_forward_hook(record)  # runs after the edit's hook
            mt.model(**inputs)
            handle.remove()
    changed = (recorded["hidden"] - clean).abs().sum(-1).gt(0)
    expected = torch.zeros_like(changed)
    for row, text in enumerate(texts):
        for entity in directions:
            positions = harm.mention_positions(text, entity, offsets[row], mask[row], True)
            expected[row, positions] = True
    assert changed.equal(expected)
    assert changed[0].sum() == 1 and changed[1].sum() == 2 and changed[2].sum() == 0
    assert not block._forward_hooks


def test_toy_tasks_are_written_in_the_real_formats_and_scored(mt, tmp_path):
    world = generate_world(seed=0, num_entities=12)
    excluded = {world.entities[0].name}
    paths = toy_general.export_toy_tasks(world, tmp_path, excluded, limit=6)
    recall = tasks.load_open_qa(paths["toy_recall"])
    entailment = tasks.load_nli(paths["toy_entailment"])
    text = tasks.load_summarization(paths["toy_text"])
    assert len(recall) == 6 and not any(world.entities[0].name in r.question for r in recall)
    assert [item.entailment for item in entailment] == [True, False] * 3
    assert len(text) == 6 and all(item.summary for item in text)
    items = harm.load_task_items(list(toy_general.TOY_TASK_FILES), tmp_path, 4)
    scores = harm.score_tasks(abilities.Scorer(mt), items, ("loglik",))
    assert [s.task for s in scores] == ["toy_recall", "toy_entailment", "toy_text"]
    assert all(s.count == 4 for s in scores)


def test_report_plots_and_tabulates_runs(mt, tmp_path):
    method = base.FunctionEditor("rome", CountingRome(), batches=False)
    harm.run_harm(mt, method, edits(), TASK_ITEMS, settings("instance-sequential"), tmp_path / "r")
    curves = harm_report.read_curves([tmp_path / "r", tmp_path])
    assert [c.label for c in curves] == ["rome instance-sequential"]
    table = harm_report.markdown_table(curves)
    assert "| rome instance-sequential | 3 |" in table and "sentiment/loglik:accuracy" in table
    assert harm_report.plot_curves(curves, tmp_path / "harm.png").stat().st_size > 1000


def write_run(directory, mode: str, rect_share: float | None, checkpoints=(0, 1, 4)) -> None:
    """A finished harm run's checkpoint files, as run_harm writes them (no edit scores at 0)."""
    for number in checkpoints:
        checkpoint = harm.Checkpoint(
            num_edits=number,
            method="rome",
            mode=mode,
            rect_share=rect_share,
            batch_size=2,
            edits=harm.EditScores(1.0, 0.9 - number / 10, 1.0 - number / 20) if number else None,
            tasks=[abilities.TaskScore("sentiment", "loglik", "accuracy", 0.8 - number / 50, 4)],
        )
        io.write_json(directory / f"checkpoint_{number}.json", checkpoint.to_dict())


def harm_figure(tmp_path):
    """The harm figure of three runs of one method (the case where colour by method fails)."""
    write_run(tmp_path / "a", "instance-sequential", None)
    write_run(tmp_path / "b", "batch-sequential", None)
    write_run(tmp_path / "c", "batch-sequential", 0.2)
    curves = harm_report.read_curves(sorted(tmp_path.iterdir()))
    return curves, harm_report.curves_figure(curves)


def test_each_run_of_the_harm_plot_has_its_own_colour(tmp_path):
    curves, figure = harm_figure(tmp_path)
    panels = [axis for axis in figure.axes if axis.get_lines()]
    assert len(panels) == 4  # efficacy, generalization, locality, the task
    colours = [
        {line.get_label(): to_hex(line.get_color()) for line in p.get_lines()} for p in panels
    ]
    assert all(len(set(by_run.values())) == len(curves) == 3 for by_run in colours)
    assert all(by_run == colours[0] for by_run in colours)  # a run keeps its colour in every panel
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_labels == [curve.label for curve in curves]
    figures.pyplot().close(figure)


def test_all_harm_panels_share_the_x_axis_from_the_unedited_model(tmp_path):
    _, figure = harm_figure(tmp_path)
    panels = {axis.get_title(): axis for axis in figure.axes if axis.get_lines()}
    task = panels["sentiment/loglik:accuracy"]
    assert task.get_lines()[0].get_xdata()[0] == 0  # the unedited model's point
    assert panels["efficacy"].get_lines()[0].get_xdata()[0] == 1  # no edit scores before an edit
    limits = {axis.get_xlim() for axis in panels.values()}
    assert len(limits) == 1
    left, right = limits.pop()
    assert left <= 0 < 1 < 4 <= right
    figures.pyplot().close(figure)


def test_the_script_rejects_bad_modes_in_one_line_before_loading_anything():
    from scripts import harm_run

    with pytest.raises(errors.UsageError, match="unknown edit mode 'all-at-once'") as error:
        harm_run.main(["--model", "toy", "--method", "rome", "--mode", "all-at-once"])
    assert "\n" not in str(error.value)
    with pytest.raises(errors.UsageError, match="'ft' edits one fact at a time") as error:
        harm_run.main(["--model", "toy", "--method", "ft", "--mode", "batch-single"])
    assert "\n" not in str(error.value)
    argv = ["--model", "toy", "--method", "memit", "--mode", "batch-sequential", "--edits", "1,10"]
    with pytest.raises(errors.UsageError, match=r"checkpoints \[1\] would cut a batch"):
        harm_run.main(argv)


def test_the_lm_eval_bridge_says_clearly_when_it_cannot_run(mt):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        with pytest.raises(errors.UsageError, match="needs lm-evaluation-harness") as error:
            harm.lm_eval_scores(mt, ["hellaswag"])
        assert "\n" not in str(error.value)
    else:
        pytest.skip("lm_eval is installed; its offline message needs a machine without it")


@pytest.mark.shared_data
def test_zsre_records_become_edit_requests():
    from remedi import env
    from remedi.data import zsre

    file = (
        env.shared_data_dir()
        / "edit_harms"
        / "edited-data"
        / "zsre_mend_eval_portability_gpt4.json"
    )
    requests = harm.zsre_edits(zsre.load_zsre(file))
    assert len(requests) == 1037
    first = requests[0]
    assert first.request.subject in first.request.prompt and first.request.target_new == "2006"
    assert first.locality_prompts[0].startswith("nq question:") and first.sample is None


def test_the_script_on_toy_small_uses_the_small_world(small_world: BuiltToyWorld, tmp_path):
    from scripts import harm_run

    data_dir = tmp_path / "data"
    shutil.copytree(small_world.paths.data_dir, data_dir / "toy-small")
    # Another world where the script used to look for every toy model's (data/toy/world.json).
    default_world = generate_world(seed=7, num_entities=12)
    (data_dir / "toy").mkdir()
    io.write_json(data_dir / "toy" / "world.json", default_world.to_json())
    results = tmp_path / "results"
    argv = ["--model", "toy-small", "--method", "rome", "--mode", "instance-sequential"]
    argv += ["--edits", "1", "--task-limit", "4", "--protocols", "loglik", "--device", "cpu"]
    with (
        toy_dirs(small_world.models_dir, data_dir),
        env.overridden(REMEDI_RESULTS_DIR=results),
    ):
        assert harm_run.main([*argv, "-n", "small"]) == 0
        small_corpus = corpora.open_corpus("toy:toy-small")
    # The toy tasks are the small world's (about its entities that no edit touches), not the
    # other world's, whose entities it would ask about.
    small = World.from_json(io.read_json(small_world.paths.world_file, "toy world"))
    records = data.load_counterfact_records(small_world.paths.counterfact_file)
    # Without an editors run, only the world's test people are edited, so the tasks ask about
    # its training people (with every person a candidate they were empty: NaN scores).
    test_people = small.entities_of_split("test")
    subjects = {case.entity for case in evaluation.counterfact_cases(records)} & test_people
    assert subjects and subjects != {case.entity for case in evaluation.counterfact_cases(records)}
    for world, name in ((small, "expected"), (default_world, "other")):
        toy_general.export_toy_tasks(world, tmp_path / name, subjects, 4)

    def task_files(directory: Path) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}

    exported = task_files(results / "small" / "tasks")
    assert exported == task_files(tmp_path / "expected")
    checkpoint_0 = json.loads((results / "small" / "checkpoint_0.json").read_text())
    assert all(task["count"] > 0 for task in checkpoint_0["tasks"])
    assert exported != task_files(tmp_path / "other")
    # ROME's statistics ran on the small world's text, under its key.
    (moment_file,) = (results / "stats").rglob("*_mom2.safetensors")
    with safetensors.safe_open(str(moment_file), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["model"] == "toy-small" and metadata["dataset"] == small_corpus.key
    assert metadata["corpus"] == "toy:toy-small"
    # The edit came from the small world's CounterFact export (not a download of ROME's).
    checkpoint = json.loads((results / "small" / "checkpoint_1.json").read_text())
    assert checkpoint["num_edits"] == 1


class BigramLM(torch.nn.Module):
    """A causal LM whose prediction after each token is a fixed successor (a hand-made table);
    any other token predicts ``fallback``."""

    def __init__(self, vocab_size: int, successors: dict[int, int], fallback: int):
        super().__init__()
        self.config = SimpleNamespace(n_positions=64)
        table = torch.zeros(vocab_size, vocab_size)
        table[:, fallback] = 0.5
        for token, successor in successors.items():
            table[token, successor] = 1.0
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def test_token_accuracy_is_easyedits_teacher_forced_share_of_target_tokens(tokenizer):
    prompt, target = "Mira Talovan lives in", "Kelo Vantri Bornadel"
    ids = tokenizer(f"{prompt} {target}")["input_ids"]
    start = len(tokenizer(prompt)["input_ids"])
    answer = ids[start:]
    assert len(answer) >= 3 and len(set(ids)) == len(ids)  # a table can hold every bigram
    fallback = next(token for token in range(len(tokenizer)) if token not in ids)
    for right in range(len(answer) + 1):
        # The LM gets the first `right` target tokens (teacher-forced: each after the true
        # ones before it) and none of the rest; what it says inside the prompt does not count.
        successors = {ids[start - 1 + j]: answer[j] for j in range(right)}
        lm = BigramLM(len(tokenizer), successors, fallback)
        scorer = abilities.Scorer(models.ModelAndTokenizer(lm, tokenizer, "bigram"))  # type: ignore[arg-type]
        accuracy = scorer.token_accuracy([prompt, prompt], [target, " " + target])
        assert accuracy == [right / len(answer)] * 2
        exact = scorer.continuations([prompt], [" " + target]).is_greedy
        assert exact == [right == len(answer)]  # exact match: every token, or nothing
    # A target with no token of its own is NaN there, which the edit scores skip (as EasyEdit).
    assert harm._mean([0.5, float("nan"), 1.0]) == 0.75


def test_edit_scores_report_token_accuracy_beside_exact_match_and_old_runs_still_load(mt, tmp_path):
    method = base.FunctionEditor("rome", CountingRome(), batches=False)
    results = harm.run_harm(
        mt, method, edits(), TASK_ITEMS, settings("instance-sequential"), tmp_path / "new"
    )
    scores = results[-1].edits
    assert scores is not None and scores.efficacy_token_accuracy is not None
    assert scores.generalization_token_accuracy is not None
    # Exact match implies every token right: token accuracy is never below it.
    assert scores.efficacy_token_accuracy >= scores.efficacy
    # A checkpoint written before token accuracy, RECT's baselines and settings loads with
    # their defaults, and its report has no token-accuracy point.
    write_run(tmp_path / "old", "instance-sequential", 0.2)
    raw = io.read_json(tmp_path / "old" / "checkpoint_1.json", "checkpoint")
    for key in ("regularizer", "hparams_setting"):
        raw.pop(key)
    for key in ("efficacy_token_accuracy", "generalization_token_accuracy"):
        raw["edits"].pop(key)
    io.write_json(tmp_path / "old" / "checkpoint_1.json", raw)
    old = harm.Checkpoint.from_dict(raw)
    assert (old.regularizer, old.hparams_setting) == ("rect", None)
    assert old.edits is not None and old.edits.efficacy_token_accuracy is None
    curves = harm_report.read_curves([tmp_path / "new", tmp_path / "old"])
    assert [curve.label for curve in curves] == [
        "rome instance-sequential",
        "rome instance-sequential +RECT0.2",
    ]
    assert "efficacy (token acc.)" in curves[0].points
    assert 1 not in curves[1].points.get("efficacy (token acc.)", {})
    header = harm_report.markdown_table(curves).splitlines()[0]
    assert header.index("| efficacy |") < header.index("| efficacy (token acc.) |")


def test_baselines_regularise_each_update_seeded_and_are_named_in_the_results(mt, tmp_path):
    weight = "transformer.h.0.mlp.c_proj.weight"
    before = mt.model.get_parameter(weight).detach().clone()
    method = base.FunctionEditor("rome", CountingRome(), batches=False)

    def first_state(name: str, **kwargs) -> torch.Tensor:
        run = harm.HarmSettings("rome", "instance-sequential", [1], protocols=(), **kwargs)
        results = harm.run_harm(mt, method, edits(), {}, run, tmp_path / name)
        assert results[-1].regularizer == kwargs.get("regularizer", "rect")
        return safetensors.torch.load_file(tmp_path / name / "state_1.safetensors")[weight]

    whole = first_state("whole")
    random_a = first_state("random_a", rect_share=0.2, regularizer="random", seed=1)
    random_b = first_state("random_b", rect_share=0.2, regularizer="random", seed=1)
    random_c = first_state("random_c", rect_share=0.2, regularizer="random", seed=2)
    kept = random_a.ne(before)
    assert int(kept.sum()) == math.ceil(0.2 * before.numel())
    assert torch.equal(random_a[kept], whole[kept])
    assert torch.equal(random_a, random_b) and not torch.equal(random_a, random_c)
    # ROME's update has rank one: PCA keeps it whole.
    pca = first_state("pca", rect_share=0.2, regularizer="pca")
    assert torch.allclose(pca, whole, atol=1e-5)
    checkpoint = harm.Checkpoint.from_dict(io.read_json(tmp_path / "pca" / "checkpoint_1.json"))
    assert harm_report.run_label(checkpoint) == "rome instance-sequential +PCA0.2"
    with pytest.raises(errors.UsageError, match="unknown regulariser 'svd'"):
        first_state("bad", rect_share=0.2, regularizer="svd")


def test_rome_as_gu_et_al_ran_it_is_a_packaged_setting():
    from scripts import harm_run

    # Their hparams/ROME/gpt2-xl.yaml and llama-7b.yaml: no covariance, 20 prefixes.
    gpt2_xl = registry.load_hparams("rome", "gpt2-xl", setting="gu2024")
    assert (gpt2_xl.layer, gpt2_xl.mom2_adjustment) == (17, False)
    assert gpt2_xl.context_template_lengths == [[5, 10], [10, 10]]
    assert registry.load_hparams("rome", "gpt2-xl").mom2_adjustment  # the default is ROME's
    llama = registry.load_hparams("rome", "meta-llama/Llama-2-7b-hf", setting="gu2024")
    assert (llama.layer, llama.v_num_grad_steps, llama.v_weight_decay) == (5, 25, 1e-3)
    toy = registry.load_hparams("rome", "toy-small", setting="gu2024")
    assert (toy.layer, toy.mom2_adjustment) == (0, False)
    with pytest.raises(errors.UsageError, match="no hyperparameter setting 'gu' for rome"):
        registry.load_hparams("rome", "gpt2-xl", setting="gu")
    with pytest.raises(errors.UsageError, match="no hyperparameter setting 'gu2024' for memit"):
        registry.load_hparams("memit", "gpt2-xl", setting="gu2024")
    argv = ["--model", "gpt2-xl", "--method", "rome", "--mode", "instance-sequential"]
    args = harm_run.parse_args([*argv, "--setting", "gu2024", "--regularizer", "pca"])
    args.rect = 0.2
    assert harm_run.experiment_name(args) == "harm_gpt2-xl_rome-gu2024_instance-sequential_pca0.2"
    assert harm_run.experiment_name(harm_run.parse_args([*argv, "--rect"])) == (
        "harm_gpt2-xl_rome_instance-sequential_rect0.2"
    )
