"""End to end on the small toy world: a trained editor edits facts of entities it never saw."""

from __future__ import annotations

import pytest

from remedi import models, precompute, training
from tests.toy_fixtures import BuiltToyWorld, small_world, toy_dirs  # noqa: F401

# The toy LM's settings (see remedi.training): edit all entity tokens, read the attribute's
# last token, a weak KL term, a faster learning rate; prompts are rewrite prompts (the toy's
# paraphrases are templates held out from LM training, see tasks.py).
TOY_OPTIONS = dict(
    use_all_entity_tokens=True,
    use_last_attribute_token=True,
    lam_kl=1.0,
    lr=3e-2,
    counterfact_prompt="rewrite",
)


@pytest.mark.slow
def test_editor_trained_on_toy_small_flips_facts_of_held_out_entities(
    small_world: BuiltToyWorld,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        mt = models.load_model("toy-small")
        args = training.RunArgs(
            name="toy_small_editors",
            model="toy-small",
            dataset_file=str(small_world.paths.counterfact_file),
            layers=[0],
            test_size=0.25,
            seed=0,
            **TOY_OPTIONS,
        )
        run = training.train_run(args, mt=mt)

        test = training.load_run_samples(run, "test")
        trained_on = set(training.load_run_samples(run, "train")["entity"])
        trained_on |= set(training.load_run_samples(run, "validation")["entity"])
        assert len(test) >= 30
        assert not trained_on & set(test["entity"])

        editor = training.load_run_editor(run, layer=0, mt=mt)
        edited, unedited = training.efficacy(mt, editor, precompute.editor_inputs(mt, test, [0]))

    # Efficacy: p(target_new) > p(target_true) at the prompt's last token. The full toy world
    # reaches 97.6%; this 2-layer world's editors reach 64-80% depending on the seed.
    assert unedited is not None and unedited < 0.1
    assert edited is not None and edited >= 0.5
