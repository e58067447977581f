"""The method table: a method registered in one place runs through every suite that can run it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from remedi import canon, data, errors, evaluation, models
from remedi.data import canonical
from remedi.data import general_tasks as tasks
from remedi.evaluation.general import harm
from remedi.methods import base, common, registry
from tests.conftest import save_tiny_gpt2, weighty_gpt2
from tests.test_canonical import _tiny_config, write_works_for_data
from tests.test_weight_methods import assert_unchanged, weights_of

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass
class NudgeHparams:
    """A throwaway method's hyperparameters: shift the MLP output bias of ``layer``."""

    layer: int = 0
    scale: float = 0.5


class NudgeEditor(base.WeightEditor):
    """Shift one MLP output bias along a fixed direction, ``scale`` per request (all requests at
    once)."""

    batches = True

    def __init__(self, hparams: NudgeHparams):
        self.hparams = hparams
        self.label = f"Nudge (L{hparams.layer})"
        self.calls: list[int] = []

    def details(self) -> dict[str, str]:
        return {"scale": str(self.hparams.scale)}

    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[common.EditRequest]
    ) -> base.NewWeights:
        self.check_requests(requests)
        self.calls.append(len(requests))
        projection = models.determine_mlp_output(mt.model, self.hparams.layer)
        name = projection.module_path + ".bias"
        bias = mt.model.get_parameter(name)
        # Not a constant: the layer norms after it would remove a constant shift.
        shift = torch.linspace(-1.0, 1.0, bias.shape[0], dtype=bias.dtype, device=bias.device)
        return base.NewWeights({name: bias.detach() + self.hparams.scale * len(requests) * shift})


def prepare_nudge(
    mt: models.ModelAndTokenizer, hparams: NudgeHparams, setup: base.MethodSetup
) -> NudgeEditor:
    common.check_layers(mt, [hparams.layer])
    return NudgeEditor(hparams)


NUDGE = registry.MethodSpec(
    "nudge", "Nudge", "weights", NudgeHparams, batches=True, prepare=prepare_nudge
)


@pytest.fixture()
def nudge() -> Iterator[registry.MethodSpec]:
    """The throwaway method, registered for one test: the only place it is named."""
    registry.register(NUDGE)
    try:
        yield NUDGE
    finally:
        registry.unregister(NUDGE.name)


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


def test_a_method_registered_once_runs_through_counterfact_harm_and_canonical_examples(
    nudge, mt, tokenizer, tmp_path
):
    assert "nudge" in evaluation.judged_methods()
    assert "nudge" in harm.harm_methods() and "nudge" in harm.batching_methods()
    assert "nudge" in canon.canon_methods()
    before = weights_of(mt)

    # CounterFact: built by name, each case's prompt scored under that case's edit.
    cases = evaluation.counterfact_cases(
        data.load_counterfact_records(FIXTURES / "eval_counterfact.json")
    )
    resources = evaluation.EvalResources(batch_size=2)
    method = evaluation.build_method("nudge", mt, cases, resources, scale=2.0)
    assert method.name == "nudge" and method.label == "Nudge (L0)" and method.edits_weights
    edited = evaluation.run_benchmarks(
        mt, [method], cases, resources, tmp_path / "counterfact", ["efficacy"]
    )["nudge"]["efficacy"]
    assert edited.settings.method_details == {"scale": "2.0"}
    plain = evaluation.efficacy(mt, evaluation.Method(), cases, resources)
    assert [c.p_new for c in edited.cases] != [c.p_new for c in plain.cases]
    assert_unchanged(mt, before)

    # Harm: all edits at once from the unedited model at each checkpoint (it batches).
    editor = harm.editing_method("nudge", mt)
    assert isinstance(editor, NudgeEditor)
    edits = [
        harm.HarmEdit(
            common.EditRequest(f"{subject} lives in", subject, target),
            (f"{subject} lives in the city of",),
            ("Barack Obama was born in",),
        )
        for subject, target in (("Mira Talovan", "Oslo"), ("Kelo Vantri", "Paris"))
    ]
    items = {"sentiment": [tasks.SentimentItem("a charming journey", True)] * 2}
    settings = harm.HarmSettings("nudge", "batch-single", [1, 2], protocols=("loglik",))
    checkpoints = harm.run_harm(mt, editor, edits, items, settings, tmp_path / "harm")
    assert [c.num_edits for c in checkpoints] == [0, 1, 2] and editor.calls == [1, 2]
    assert checkpoints[2].tasks[0].score == checkpoints[2].tasks[0].score  # scored, not NaN
    assert (tmp_path / "harm" / "state_2.safetensors").is_file()
    assert_unchanged(mt, before)

    # Canonical examples: one edit writing every training example, evaluated before and after.
    model_dir = save_tiny_gpt2(tokenizer, tmp_path / "model")
    examples = [
        canonical.CanonicalExample(f"Next comes {name}", " is", None, name)
        for name in ("Ann Smith", "Bo Lee")
    ]
    root = write_works_for_data(tmp_path / "data", examples)
    extra = {"data_root": str(root), "method": {"name": "nudge"}}
    config = _tiny_config(model_dir, tmp_path / "canon", "toy_works_for", **extra)
    result = canon.run_experiment(config)
    assert result.method == "nudge" and [e.epoch for e in result.epochs] == [0, 1]
    assert result.epochs[1].general_loss != result.epochs[0].general_loss


def test_the_table_refuses_bad_entries_and_names_what_there_is(nudge, mt):
    assert registry.register(NUDGE) is NUDGE  # the same entry again: nothing changes
    with pytest.raises(errors.UsageError, match="'nudge' is already registered"):
        registry.register(dataclasses.replace(NUDGE, label="Another nudge"))
    with pytest.raises(errors.UsageError, match="edits weights but has no prepare or train"):
        registry.MethodSpec("broken", "Broken", "weights", NudgeHparams)
    with pytest.raises(errors.UsageError, match="choose one of weights, hidden_states, text"):
        registry.MethodSpec("odd", "Odd", "logits", rewrite=lambda p, e: p)  # type: ignore[arg-type]
    with pytest.raises(
        errors.UsageError, match=r"unknown method 'nudg'; registered methods: .*nudge"
    ):
        registry.method_spec("nudg")
    with pytest.raises(
        errors.UsageError, match="has no option strength; its hyperparameters are layer, scale"
    ):
        registry.prepare("nudge", mt, strength=2.0)
    with pytest.raises(errors.UsageError, match="'prefix' rewrites the prompt's text"):
        registry.prepare("prefix", mt)
    with pytest.raises(errors.UsageError, match="'full' is trained"):
        harm.editing_method("full", mt)
    hparams = registry.load_hparams("nudge", mt.name, overrides={"scale": 3.0, "layer": None})
    assert hparams == NudgeHparams(layer=0, scale=3.0)


def test_writes_are_checked_and_restored_exactly_even_when_the_body_raises(mt):
    before = weights_of(mt)
    name = "transformer.h.0.mlp.c_proj.bias"
    with (
        pytest.raises(RuntimeError, match="boom"),
        base.weights_applied(mt.model, {name: before[name] + 1.0}),
    ):
        assert not torch.equal(mt.model.get_parameter(name), before[name])
        raise RuntimeError("boom")
    assert_unchanged(mt, before)
    with pytest.raises(errors.UsageError, match="parameters the model does not have"):
        base.write_weights(mt.model, {"transformer.h.9.mlp.c_proj.bias": before[name]})
    with pytest.raises(errors.UsageError, match=r"has shape \(3,\), the parameter \(32,\)"):
        base.write_weights(mt.model, {name: torch.zeros(3)})
    with pytest.raises(errors.UsageError, match="unedited tensor"):
        base.write_weights(mt.model, {name: mt.model.get_parameter(name)})
    # A failed check writes nothing, not even the names that passed it.
    with pytest.raises(errors.UsageError):
        base.write_weights(mt.model, {name: before[name] + 1.0, "lm_head.bias": before[name]})
    assert_unchanged(mt, before)
