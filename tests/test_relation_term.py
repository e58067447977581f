"""The entity's other relations: their prompts from a dataset's templates, training's relation
term (``lam_rel``), and relation specificity on CounterFact-format data (tiny real models)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from remedi import data, editors, evaluation, models, precompute, training
from remedi.methods import registry
from remedi.models import ModelAndTokenizer
from tests.conftest import tiny_gpt2, weighty_gpt2
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

FIXTURES = Path(__file__).parent / "fixtures"


def _record(case_id: int, subject: str, template: str, relation: str, true: str, new: str):
    return {
        "case_id": case_id,
        "requested_rewrite": {
            "prompt": template,
            "relation_id": relation,
            "subject": subject,
            "target_true": {"str": true, "id": ""},
            "target_new": {"str": new, "id": ""},
        },
    }


RECORDS = [
    _record(0, "Kelo Vantri", "{} lives in the city of", "P551", "Oslo", "Lisbon"),
    _record(1, "Mira Talovan", "{} resides in", "P551", "Paris", "Oslo"),
    _record(2, "Danu Revik", "{} lives in the city of", "P551", "Lisbon", "Paris"),
    _record(3, "Xavi Bornadel", "{} is a citizen of", "P27", "Spain", "France"),
    _record(4, "Kelo Vantri", "{} speaks", "P1412", "Spanish", "French"),
    _record(5, "Mira Talovan", "{} writes in", "P1412", "French", "Spanish"),
    _record(6, "Danu Revik", "{} works as a", "P106", "doctor", "painter"),
]


# --- the prompts -------------------------------------------------------------------------------


def test_other_relations_are_the_dataset_templates_filled_with_the_subject():
    templates = data.RelationTemplates.from_records(RECORDS)
    # Most used template first (P551's "lives in the city of" twice).
    assert templates.templates["P551"] == ["{} lives in the city of", "{} resides in"]
    # Kelo Vantri's residence edit: one template of each other relation, in relation order
    # (P106, P1412, P27), then each relation's second template.
    assert templates.other_prompts("Kelo Vantri", "P551", "{} lives in the city of") == [
        "Kelo Vantri works as a",
        "Kelo Vantri speaks",
        "Kelo Vantri is a citizen of",
        "Kelo Vantri writes in",
    ]
    assert templates.other_prompts("Kelo Vantri", "P551", "", per_relation=1) == [
        "Kelo Vantri works as a",
        "Kelo Vantri speaks",
        "Kelo Vantri is a citizen of",
    ]
    assert templates.other_prompts("Kelo Vantri", "P551", "", max_prompts=2) == [
        "Kelo Vantri works as a",
        "Kelo Vantri speaks",
    ]
    # A relation the edited one implies is not "other": nationality -> language.
    implied = data.RelationTemplates.from_records(RECORDS, implied={"P27": ["P1412"]})
    assert implied.other_relations("P27") == ["P106", "P551"]
    prompts = implied.prompts_by_sample_id(RECORDS, max_prompts=None)
    assert prompts["counterfact/3"] == [
        "Xavi Bornadel works as a",
        "Xavi Bornadel lives in the city of",
        "Xavi Bornadel resides in",
    ]


def test_without_relation_ids_templates_sharing_answers_are_one_relation():
    # EasyEdit's format has no relation ids: the residence templates share their cities, the
    # language ones their languages; the occupation template shares nothing.
    unlabelled = [
        dataclasses.replace(fact, relation_id="")
        for fact in data.relations.facts_of_records(RECORDS)
    ]
    templates = data.RelationTemplates.from_facts(unlabelled)
    assert sorted(templates.templates.values()) == [
        ["{} is a citizen of"],
        ["{} lives in the city of", "{} resides in"],
        ["{} speaks", "{} writes in"],
        ["{} works as a"],
    ]
    # A paraphrase of the edited relation is never "other".
    prompts = templates.other_prompts("Kelo Vantri", "", "{} resides in", per_relation=1)
    assert sorted(prompts) == [
        "Kelo Vantri is a citizen of",
        "Kelo Vantri speaks",
        "Kelo Vantri works as a",
    ]


# --- the training term -------------------------------------------------------------------------

SAMPLES = [
    {
        "id": f"counterfact/{record['case_id']}",
        "entity": record["requested_rewrite"]["subject"],
        "prompt": record["requested_rewrite"]["prompt"].format(
            record["requested_rewrite"]["subject"]
        ),
        "context": record["requested_rewrite"]["prompt"].format(
            record["requested_rewrite"]["subject"]
        )
        + " "
        + record["requested_rewrite"]["target_new"]["str"],
        "target_mediated": record["requested_rewrite"]["target_new"]["str"],
        "target_unmediated": record["requested_rewrite"]["target_true"]["str"],
    }
    for record in RECORDS
]
for sample in SAMPLES:
    sample["attribute"] = data.attribute_from_context(sample["context"], sample["entity"])


@pytest.fixture(scope="module")
def mt64(tokenizer) -> ModelAndTokenizer:
    """A float64 tiny GPT-2 whose predictions move with an edit (weights at 0.2)."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2).double().requires_grad_(False)
    return ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny-gpt2")


def _inputs64(mt64: ModelAndTokenizer, layer: int) -> precompute.EditorInputs:
    """The samples' inputs at ``layer`` in float64, with up to 3 other-relation prompts each."""
    inputs = precompute.editor_inputs(mt64, SAMPLES, layers=[layer])
    hidden = ("entity_last_hiddens", "entity_average_hiddens")
    hidden += ("attribute_hiddens", "attribute_last_hiddens")
    inputs = dataclasses.replace(
        inputs,
        **{name: {k: v.double() for k, v in getattr(inputs, name).items()} for name in hidden},
    )
    prompts = data.RelationTemplates.from_records(RECORDS).prompts_by_sample_id(RECORDS, 3)
    return inputs.with_relation_prompts(prompts)


@pytest.fixture(scope="module")
def inputs64(mt64) -> precompute.EditorInputs:
    return _inputs64(mt64, 0)


def _linear(mt, layer: int = 0, std: float = 0.5) -> editors.Editor:
    torch.manual_seed(0)
    editor = editors.new_editor("linear", mt, layer=layer)
    with torch.no_grad():
        editor.w.weight.normal_(std=std)
    return editor.to(models.determine_dtype(mt.model))


def _last_token_log_probs(mt, prompt, entity, direction, layer) -> torch.Tensor:
    """The next-token log-probabilities of ``prompt`` alone, ``direction`` added (by a hook
    written here) at the last token of the entity's last mention at ``layer``'s output."""
    encoded = mt.tokenizer(prompt, return_offsets_mapping=True)
    end_char = prompt.rfind(entity) + len(entity)
    entity_last = max(
        i for i, (start, _) in enumerate(encoded["offset_mapping"]) if start < end_char
    )

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edit = torch.zeros_like(hidden)
        edit[0, entity_last] = direction
        return (hidden + edit, *output[1:]) if isinstance(output, tuple) else hidden + edit

    block = models.resolve_layer(mt.model, layer)
    handle = block.register_forward_hook(add) if direction is not None else None
    try:
        logits = mt.model(torch.tensor([encoded["input_ids"]])).logits[0, -1]
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits, dim=-1)


def test_the_relation_term_is_the_mean_kl_on_the_entitys_other_prompts(mt64, inputs64):
    editor = _linear(mt64)
    with torch.no_grad():
        directions = editors.directions_from_inputs(editor, inputs64)
        term = training.relation_kl(mt64, editor, inputs64, directions)
    per_sample = []
    for prompts, entity, direction in zip(
        inputs64.relation_prompts or [], inputs64.entities, directions, strict=True
    ):
        kls = []
        for prompt in prompts:
            logp_edit = _last_token_log_probs(mt64, prompt, entity, direction, 0)
            logp_orig = _last_token_log_probs(mt64, prompt, entity, None, 0)
            kls.append((logp_orig.exp() * (logp_orig - logp_edit)).sum())
        per_sample.append(torch.stack(kls).mean())
    expected = torch.stack(per_sample).mean()
    assert expected > 1e-3
    assert_equal_in_exact_arithmetic(term, expected, precision_of(mt64))


def test_the_relation_term_is_zero_when_the_edit_leaves_the_prompts_and_grows_as_it_moves_them(
    mt64, inputs64
):
    editor = _linear(mt64)
    with torch.no_grad():
        directions = editors.directions_from_inputs(editor, inputs64)
        values = [
            training.relation_kl(mt64, editor, inputs64, scale * directions).item()
            for scale in (0.0, 0.5, 1.0, 2.0)
        ]
    assert values[0] == 0.0
    assert 1e-4 < values[1] < values[2] < values[3]
    # An edit at the last layer's output at the entity reaches no later token: every other
    # relation's prompt ends after the entity, so their predictions, and the term, stay put.
    last = models.determine_layers(mt64)[-1]
    last_editor = _linear(mt64, layer=last)
    last_inputs = _inputs64(mt64, last)
    with torch.no_grad():
        moved = editors.directions_from_inputs(last_editor, last_inputs)
        assert moved.norm(dim=-1).min() > 1.0
        held = training.relation_kl(mt64, last_editor, last_inputs, moved)
    assert held.item() == pytest.approx(0.0, abs=1e-12)


def test_lam_rel_off_or_zero_is_todays_loss_exactly(mt64, inputs64):
    editor = _linear(mt64)
    today = training.LossWeights()
    loss, terms = training.editing_loss(mt64, editor, inputs64, today)
    gradients = torch.autograd.grad(loss, list(editor.parameters()))
    assert "relation" not in terms
    zero, zero_terms = training.editing_loss(
        mt64, editor, inputs64, dataclasses.replace(today, lam_rel=0.0)
    )
    zero_gradients = torch.autograd.grad(zero, list(editor.parameters()))
    assert zero_terms["relation"] > 1e-4  # computed, named, and weighted by nothing
    assert zero.item() == loss.item()
    for gradient, zero_gradient in zip(gradients, zero_gradients, strict=True):
        assert torch.equal(gradient, zero_gradient)
    lam_rel = 0.3
    weighted, weighted_terms = training.editing_loss(
        mt64, editor, inputs64, dataclasses.replace(today, lam_rel=lam_rel)
    )
    assert_equal_in_exact_arithmetic(
        weighted - loss, lam_rel * weighted_terms["relation"], precision_of(mt64), scale=1.0
    )


def test_lam_rel_without_relation_prompts_says_what_to_do(mt64, inputs64):
    bare = dataclasses.replace(inputs64, relation_prompts=None)
    with pytest.raises(ValueError, match="CounterFact-format data"):
        training.editing_loss(mt64, _linear(mt64), bare, training.LossWeights(lam_rel=1.0))


def test_training_with_the_relation_term_holds_the_other_relations(tokenizer):
    # The same editor trained with and without the term, from the same start: the term lowers
    # the KL on the other relations' prompts (training data, no generalisation claimed here).
    mt = weighty_gpt2(tokenizer)
    inputs = precompute.editor_inputs(mt, SAMPLES, layers=[0])
    prompts = data.RelationTemplates.from_records(RECORDS).prompts_by_sample_id(RECORDS, 3)
    inputs = inputs.with_relation_prompts(prompts)
    kls = {}
    for lam_rel in (None, 10.0):
        editor = _linear(mt, std=0.0)
        config = training.TrainingConfig(
            max_epochs=15,
            batch_size=4,
            lr=1e-2,
            patience=15,
            weights=training.LossWeights(lam_rel=lam_rel),
        )
        training.train_editor(mt, editor, inputs, inputs, config)
        with torch.no_grad():
            directions = editors.directions_from_inputs(editor, inputs)
            kls[lam_rel] = training.relation_kl(mt, editor, inputs, directions).item()
    assert kls[10.0] < 0.5 * kls[None]


# --- saved with the editor, a flag of the training script ---------------------------------------


def test_the_weight_is_saved_with_the_editor_and_old_configs_load(mt64, tmp_path):
    editor = editors.new_editor("linear", mt64, layer=0, lam_rel=0.5)
    editors.save_editor(editor, tmp_path / "new")
    assert editors.load_editor(tmp_path / "new").config.lam_rel == 0.5
    editors.save_editor(editors.new_editor("linear", mt64, layer=0), tmp_path / "old")
    config_file = tmp_path / "old" / editors.CONFIG_FILE
    raw = json.loads(config_file.read_text())
    del raw["lam_rel"]  # as written before the field existed
    config_file.write_text(json.dumps(raw))
    assert editors.load_editor(tmp_path / "old").config.lam_rel is None


def test_a_run_with_lam_rel_trains_on_the_datasets_relation_prompts(
    gpt2_model, tokenizer, tmp_path, monkeypatch
):
    from scripts import train_editors

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    dataset_file = tmp_path / "counterfact.json"
    dataset_file.write_text((FIXTURES / "counterfact_sample.json").read_text())
    model_dir = tmp_path / "tiny-model"
    gpt2_model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = ["-n", "rel_run", "-m", str(model_dir), "-l", "0", "--max-epochs", "1"]
    argv += ["--batch-size", "2", "--test-size", "0.25", "--hold-out", "0.34"]
    argv += ["--dataset-file", str(dataset_file), "--device", "cpu"]
    argv += ["--lam-rel", "2.5", "--max-relation-prompts", "2"]
    assert train_editors.main(argv) == 0
    directory = tmp_path / "results" / "rel_run"
    record = training.load_run(directory)
    assert record.args.lam_rel == 2.5 and record.args.max_relation_prompts == 2
    log = json.loads((directory / "linear" / "0" / "train_log.json").read_text())
    assert log["config"]["weights"]["lam_rel"] == 2.5
    assert training.load_run_editor(directory, layer=0).config.lam_rel == 2.5
    prompts = training.runs.relation_prompts(record.args)
    # Kelo Vantri's residence edit asks about his other relations (the file's usable records
    # are about P103, P108, P1412 and P551), the first two in relation order.
    assert prompts["counterfact/1"] == [
        "The mother tongue of Kelo Vantri is",
        "Kelo Vantri, who works for",
    ]
    # A toy world beside the file names the relations an edit implies: they are left out.
    world = {"implications": [{"if_relation": "P551", "then_relation": "P103"}]}
    (tmp_path / "world.json").write_text(json.dumps(world))
    prompts = training.runs.relation_prompts(record.args)
    assert prompts["counterfact/1"] == ["Kelo Vantri, who works for", "Kelo Vantri speaks"]


# --- relation specificity on CounterFact-format data -------------------------------------------


@pytest.fixture(scope="module")
def cases() -> list[evaluation.EvalCase]:
    records = data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    return evaluation.counterfact_cases(records)


def _top1(mt, text: str) -> int:
    ids = torch.tensor([mt.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return int(mt.model(ids).logits[0, -1].argmax())


def test_relation_specificity_without_a_world_reads_the_datasets_templates(tokenizer, cases):
    mt = weighty_gpt2(tokenizer)
    resources = evaluation.EvalResources(batch_size=2)
    unedited = evaluation.relation_specificity(mt, evaluation.Method(), cases, resources)
    assert unedited.available and unedited.unchanged is not None
    assert unedited.unchanged.mean == 1.0
    # Hand-checked: the fixture's three cases are about P551, P27 and P106; Kelo Vantri's
    # residence edit is asked about his citizenship and his profession, one template each.
    kelo = next(case for case in unedited.cases if case.case_id == 10)
    assert kelo.prompts == ["The profession of Kelo Vantri is", "Kelo Vantri is a citizen of"]
    assert kelo.relations == ["P106", "P27"]
    assert kelo.implied_prompts == []

    prefix = evaluation.TextMethod(registry.METHODS["prefix"])
    edited = evaluation.relation_specificity(mt, prefix, cases, resources)
    flags, expected = [], []
    for case, result in zip(cases, edited.cases, strict=True):
        for prompt, unchanged in zip(result.prompts, result.unchanged, strict=True):
            # The unedited LM's own top-1 is the reference; the prefix method asks its text.
            expected.append(_top1(mt, prefix.rewrite(case, prompt)) == _top1(mt, prompt))
            flags.append(unchanged)
    assert flags == expected and not all(flags)
    assert edited.unchanged is not None
    assert edited.unchanged.mean == pytest.approx(
        sum(sum(c.unchanged) / len(c.unchanged) for c in edited.cases) / len(edited.cases)
    )


# --- the frontier ------------------------------------------------------------------------------


def _write_summary(directory: Path, efficacy: float, relation: float) -> Path:
    from remedi.evaluation.editing import counterfact_report

    row = counterfact_report.SummaryRow(
        method="remedi",
        label="REMEDI (layer 0)",
        cases=125,
        values={"efficacy": efficacy, "relation_specificity": relation},
    )
    unedited = dataclasses.replace(row, method="unedited", label="Unedited")
    summary = counterfact_report.Summary(title="t", rows=[unedited, row])
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps(summary.to_dict()))
    return directory


def test_the_frontier_averages_each_settings_runs_and_plots_them(tmp_path, monkeypatch, capsys):
    from scripts import relation_frontier

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    off = [_write_summary(tmp_path / f"off{seed}", 90.0 + seed, 20.0 + 2 * seed) for seed in (0, 1)]
    on = [_write_summary(tmp_path / "on0", 80.0, 70.0)]
    argv = ["-n", "frontier", "--goal", "95", "90"]
    argv += ["--point", f"off={off[0]},{off[1]}", "--point", f"lam_rel 1={on[0]}"]
    assert relation_frontier.main(argv) == 0
    out = capsys.readouterr().out
    # Mean ± sample standard deviation over the runs: (90, 91) and (20, 22).
    assert "| off | 2 | 125 | 90.5 ± 0.7 | 21.0 ± 1.4 |" in out
    assert "| lam_rel 1 | 1 | 125 | 80.0 | 70.0 |" in out
    directory = tmp_path / "results" / "frontier"
    assert (directory / "frontier.png").read_bytes().startswith(b"\x89PNG")
    points = json.loads((directory / "frontier.json").read_text())
    assert [point["label"] for point in points] == ["off", "lam_rel 1"]
    with pytest.raises(FileNotFoundError, match="eval_fact_gen"):
        relation_frontier.main(["-n", "x", "--point", f"missing={tmp_path / 'nowhere'}"])


def test_a_relation_result_written_when_it_needed_a_world_is_recomputed(tokenizer, cases, tmp_path):
    mt = weighty_gpt2(tokenizer)
    resources = evaluation.EvalResources(batch_size=2)
    method = evaluation.Method()
    old = evaluation.RelationSpecificityResults(
        benchmark="relation_specificity",
        settings=evaluation.result_settings(mt, method, cases, resources),
        available=False,
        reason="needs the toy world's world.json",
    )
    path = evaluation.runner.result_file(tmp_path, method.name, "relation_specificity")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old.to_dict()))
    results = evaluation.run_benchmarks(
        mt, [method], cases, resources, tmp_path, ["relation_specificity"]
    )
    result = results[method.name]["relation_specificity"]
    assert isinstance(result, evaluation.RelationSpecificityResults) and result.available
    assert evaluation.read_result(path, "relation_specificity") == result


def test_the_sweep_task_trains_and_evaluates_each_weight_and_seed_then_draws_the_frontier(
    monkeypatch, tmp_path
):
    from invoke.context import Context

    import tasks

    ran: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(tasks, "_python", lambda c, module, args: ran.append((module, args)))
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    tasks.sweep_relspec(Context(), model="gpt2", weights="off,1", seeds="0,1", max_cases=50)
    scripts = [module for module, _ in ran]
    assert scripts == ["scripts.train_editors", "scripts.eval_fact_gen"] * 4 + [
        "scripts.relation_frontier"
    ]
    trainings = [args for module, args in ran if module == "scripts.train_editors"]
    assert [args[args.index("-n") + 1] for args in trainings] == [
        "relspec_gpt2_lamoff_seed0",
        "relspec_gpt2_lamoff_seed1",
        "relspec_gpt2_lam1_seed0",
        "relspec_gpt2_lam1_seed1",
    ]
    assert ["--lam-rel" in args for args in trainings] == [False, False, True, True]
    assert trainings[3][trainings[3].index("--seed") + 1] == "1"
    evaluation_args = ran[1][1]
    assert evaluation_args[evaluation_args.index("-b") + 1 :][:2] == [
        "efficacy",
        "relation_specificity",
    ]
    assert evaluation_args[evaluation_args.index("--max-cases") + 1] == "50"
    frontier = ran[-1][1]
    points = [frontier[i + 1] for i, arg in enumerate(frontier) if arg == "--point"]
    assert points == [
        f"paper's loss={tmp_path}/eval_relspec_gpt2_lamoff_seed0,"
        f"{tmp_path}/eval_relspec_gpt2_lamoff_seed1",
        f"lam_rel 1={tmp_path}/eval_relspec_gpt2_lam1_seed0,{tmp_path}/eval_relspec_gpt2_lam1_seed1",
    ]
