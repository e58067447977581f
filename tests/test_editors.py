"""Editor types, saving/loading, and applying editors to prompts."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from remedi import editors, precompute
from remedi.models import ModelAndTokenizer
from tests.samples import SAMPLES as COUNTERFACT_SAMPLES

# The first two shared samples (two-word entities).
SAMPLES = COUNTERFACT_SAMPLES[:2]


@pytest.fixture()
def mt(gpt2_model, tokenizer) -> ModelAndTokenizer:
    return ModelAndTokenizer(model=gpt2_model, tokenizer=tokenizer, name="tiny-gpt2")


@pytest.fixture()
def inputs(mt) -> precompute.EditorInputs:
    return precompute.editor_inputs(mt, SAMPLES, layers=[0, 1])


def _trained_like(editor: editors.Editor, seed: int = 1) -> editors.Editor:
    """Give an editor non-default weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in editor.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return editor


@pytest.mark.parametrize("editor_type", sorted(editors.EDITOR_TYPES))
def test_every_editor_type_maps_hiddens_to_directions(mt, inputs, editor_type):
    editor = editors.new_editor(editor_type, mt, layer=1)
    assert isinstance(editor, editors.EDITOR_TYPES[editor_type])
    directions = editors.directions_from_inputs(editor, inputs)
    assert directions.shape == (2, 32)
    assert directions.dtype == torch.float32
    if editor_type == "null":
        assert not directions.any()
    if editor_type == "identity":
        assert torch.equal(directions, inputs.attribute_hiddens[1])


def test_linear_editor_is_full_rank_by_default_and_low_rank_on_request(mt, inputs):
    full = editors.new_editor("linear", mt, layer=0)
    assert full.w.weight.shape == (32, 32)
    low = editors.new_editor("linear", mt, layer=0, rank=4)
    assert [tuple(layer.weight.shape) for layer in low.w] == [(4, 32), (32, 4)]
    with_entity = editors.new_editor("linear", mt, layer=0, use_entity=True)
    assert with_entity.w.weight.shape == (32, 64)
    assert editors.directions_from_inputs(with_entity, inputs).shape == (2, 32)


def test_an_editor_can_read_the_attributes_last_token(mt, inputs):
    editor = editors.new_editor("identity", mt, layer=1, input_last_attribute_token=True)
    directions = editors.directions_from_inputs(editor, inputs)
    assert torch.equal(directions, inputs.attribute_last_hiddens[1])
    assert not torch.equal(directions, inputs.attribute_hiddens[1])


def test_editors_that_read_the_entity_say_so_without_it(mt, inputs):
    editor = editors.new_editor("biaffine", mt, layer=0)
    with pytest.raises(ValueError, match="pass entity="):
        editor(attribute=inputs.attribute_hiddens[0])


@pytest.mark.parametrize("editor_type", ["linear", "biaffine", "mlp", "scalar", "random"])
def test_saved_editor_loads_back_bit_identical(mt, inputs, tmp_path, editor_type):
    options = {"rank": 3} if editor_type == "linear" else {}
    editor = _trained_like(editors.new_editor(editor_type, mt, layer=1, **options))
    editors.save_editor(editor, tmp_path / "editor")

    assert sorted(path.name for path in (tmp_path / "editor").iterdir()) == [
        "config.json",
        "weights.safetensors",
    ]
    config = json.loads((tmp_path / "editor" / "config.json").read_text())
    assert config["editor_type"] == editor_type
    assert config["layer"] == 1
    assert config["model_name"] == "tiny-gpt2"
    assert config["hidden_size"] == 32

    loaded = editors.load_editor(tmp_path / "editor", mt)
    assert type(loaded) is type(editor)
    assert loaded.config == editor.config
    for name, tensor in editor.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    if editor_type == "random":
        torch.manual_seed(0)
        expected = editors.directions_from_inputs(editor, inputs)
        torch.manual_seed(0)
        assert torch.equal(editors.directions_from_inputs(loaded, inputs), expected)
    else:
        assert torch.equal(
            editors.directions_from_inputs(loaded, inputs),
            editors.directions_from_inputs(editor, inputs),
        )


def test_parameter_free_editors_save_and_load(mt, tmp_path):
    for editor_type in ("identity", "null"):
        editors.save_editor(editors.new_editor(editor_type, mt, 0), tmp_path / editor_type)
        loaded = editors.load_editor(tmp_path / editor_type, mt)
        assert loaded.config.editor_type == editor_type


def test_load_refuses_an_editor_of_another_model(mt, tokenizer, tmp_path):
    editors.save_editor(editors.new_editor("linear", mt, layer=0), tmp_path / "editor")

    renamed = ModelAndTokenizer(model=mt.model, tokenizer=tokenizer, name="other-model")
    with pytest.raises(ValueError, match="trained for model 'tiny-gpt2'"):
        editors.load_editor(tmp_path / "editor", renamed)
    assert editors.load_editor(tmp_path / "editor", renamed, check_model=False).layer == 0

    wider = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=48, n_layer=2, n_head=2)
    )
    with pytest.raises(ValueError, match="hidden size 32"):
        editors.load_editor(
            tmp_path / "editor", ModelAndTokenizer(wider, tokenizer, name="tiny-gpt2")
        )


def test_load_refuses_files_that_are_not_an_editor(mt, tmp_path):
    (tmp_path / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an editor config"):
        editors.load_editor(tmp_path, mt)


def test_editor_directions_from_samples_match_precomputed(mt, inputs):
    editor = _trained_like(editors.new_editor("linear", mt, layer=1))
    from_samples = editors.editor_directions(mt, editor, SAMPLES)
    # Exact: the same batch of texts through the same computation (recording another layer
    # too does not change it).
    assert torch.equal(from_samples, editors.directions_from_inputs(editor, inputs))


def _block_outputs(mt, inputs, layer):
    from remedi import hooks

    with hooks.record_hiddens(mt.model, [layer]) as recorded, torch.no_grad():
        logits = mt.model(**inputs).logits
    return recorded[layer], logits


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_apply_editor_adds_the_direction_at_the_last_entity_token_only(mt, padding_side):
    editor = _trained_like(editors.new_editor("linear", mt, layer=0))
    directions = editors.editor_directions(mt, editor, SAMPLES)
    prompts = ["Kelo Vantri is a resident of", "Everyone knows that Xavi Bornadel speaks"]
    entities = ["Kelo Vantri", "Xavi Bornadel"]

    # transformers keeps hooks of its own on blocks (for output_hidden_states); ours must go.
    hooks_before = dict(mt.model.transformer.h[0]._forward_hooks)
    with editors.apply_editor(
        mt, editor, directions, prompts, entities, padding_side=padding_side
    ) as inputs:
        edited, edited_logits = _block_outputs(mt, inputs, 0)
    original, original_logits = _block_outputs(mt, inputs, 0)

    for row, (prompt, entity) in enumerate(zip(prompts, entities, strict=True)):
        ids = inputs.input_ids[row][inputs.attention_mask[row].bool()].tolist()
        offset = int(inputs.attention_mask[row].int().argmax())
        (entity_range,) = precompute.find_token_ranges(mt.tokenizer, [prompt], [entity])
        last_entity = offset + int(entity_range[1]) - 1
        assert mt.tokenizer.decode(ids[: last_entity - offset + 1]).endswith(entity[-3:])
        difference = edited[row] - original[row]
        # (h + d) - h is d up to the float32 rounding of h + d: the default float32 tolerance
        # (rtol 1.3e-6, ten ulps) covers it while |h| is not far above |d|.
        torch.testing.assert_close(difference[last_entity], directions[row])
        untouched = torch.ones(len(difference), dtype=torch.bool)
        untouched[last_entity] = False
        assert not difference[untouched].any()
        # Tokens before the entity do not see the edit; the prediction at the end does. Exact
        # even in float32: causal masking gives the edited token exactly zero weight there.
        assert torch.equal(edited_logits[row, :last_entity], original_logits[row, :last_entity])
        assert not torch.equal(edited_logits[row, -1], original_logits[row, -1])
    # The hook is gone after the block.
    assert dict(mt.model.transformer.h[0]._forward_hooks) == hooks_before


def test_apply_editor_on_all_entity_tokens(mt):
    editor = editors.build_editor(
        editors.EditorConfig("identity", 0, "tiny-gpt2", 32, edit_last_entity_token=False)
    )
    directions = torch.ones(1, 32)
    prompt, entity = "The famous singer Xavi Bornadel speaks", "Xavi Bornadel"
    with editors.apply_editor(mt, editor, directions, [prompt], [entity]) as inputs:
        edited, _ = _block_outputs(mt, inputs, 0)
    original, _ = _block_outputs(mt, inputs, 0)
    changed = (edited[0] - original[0]).abs().sum(dim=-1) > 0
    (entity_range,) = precompute.find_token_ranges(mt.tokenizer, [prompt], [entity])
    expected = torch.zeros(len(changed), dtype=torch.bool)
    expected[entity_range[0] : entity_range[1]] = True
    assert torch.equal(changed, expected)


def test_apply_editor_generates_with_the_kv_cache(mt):
    # Layer 0: in this 2-layer model an edit after the last block could not reach later tokens.
    editor = _trained_like(editors.new_editor("linear", mt, layer=0))
    directions = editors.editor_directions(mt, editor, SAMPLES)
    prompts = ["Kelo Vantri lives in", "Xavi Bornadel speaks"]
    options = dict(
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=mt.tokenizer.pad_token_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    with editors.apply_editor(
        mt, editor, directions, prompts, ["Kelo Vantri", "Xavi Bornadel"], padding_side="left"
    ) as inputs:
        edited = mt.model.generate(**inputs, **options)
    unedited = mt.model.generate(**inputs, **options)
    prompt_length = inputs.input_ids.shape[1]
    assert edited.sequences.shape == (2, prompt_length + 4)
    assert torch.equal(edited.sequences[:, :prompt_length], inputs.input_ids)
    # Every new token's prediction differs: the first from the edited prompt pass, the later
    # ones through the edited prompt's keys and values in the cache (measured 0.008-0.025,
    # far above float32 rounding).
    assert len(edited.logits) == 4
    for step_edited, step_unedited in zip(edited.logits, unedited.logits, strict=True):
        assert ((step_edited - step_unedited).abs().amax(dim=-1) > 1e-3).all()
