"""Token ranges from offset mappings, hidden states, and target ids for editors."""

from __future__ import annotations

import copy

import pytest
import torch

from remedi import hooks, precompute
from remedi.models import ModelAndTokenizer
from tests.model_fixtures import tiny_llama, tiny_model
from tests.samples import SAMPLES


@pytest.fixture()
def mt(gpt2_model, tokenizer) -> ModelAndTokenizer:
    return ModelAndTokenizer(model=gpt2_model, tokenizer=tokenizer, name="tiny-gpt2")


def _decoded(tokenizer, text: str, token_range) -> str:
    ids = tokenizer(text)["input_ids"]
    start, end = token_range
    return tokenizer.decode(ids[start:end])


def test_entity_range_covers_the_mention_with_its_leading_space(tokenizer):
    prompts = ["Xavi Bornadel speaks", "The singer Xavi Bornadel speaks"]
    ranges = precompute.find_token_ranges(tokenizer, prompts, ["Xavi Bornadel"] * 2)
    # Byte-level offsets include the space before a word (' Bornadel' starts at the space),
    # and the mention's tokens are exactly those that decode to it.
    assert _decoded(tokenizer, prompts[0], ranges[0].tolist()) == "Xavi Bornadel"
    assert _decoded(tokenizer, prompts[1], ranges[1].tolist()) == " Xavi Bornadel"
    assert ranges[0].tolist() == [0, 2]


def test_a_mention_inside_a_merged_token_takes_the_whole_token(tokenizer):
    # "Borna" is part of the BPE token " Bornadel": that token is the mention.
    (token_range,) = precompute.find_token_ranges(tokenizer, ["Xavi Bornadel speaks"], ["Borna"])
    assert _decoded(tokenizer, "Xavi Bornadel speaks", token_range.tolist()) == " Bornadel"


def test_repeated_mentions_use_the_last_one(tokenizer):
    prompt = "Kelo Vantri met Kelo Vantri in Oslo"
    (token_range,) = precompute.find_token_ranges(tokenizer, [prompt], ["Kelo Vantri"])
    ids = tokenizer(prompt)["input_ids"]
    start, end = token_range.tolist()
    # This tokenizer splits " Kelo" into " " + "Ke" + "lo": the lone space is not the entity.
    assert tokenizer.decode(ids[start:end]) == "Kelo Vantri"
    assert tokenizer.decode(ids[:start]) == "Kelo Vantri met "
    assert tokenizer.decode(ids[end:]) == " in Oslo"


def test_ranges_are_unpadded_whatever_the_padding_side(tokenizer):
    prompts = ["Mira Talovan lives in", "The doctor Mira Talovan lives in the city of"]
    entities = ["Mira Talovan"] * 2
    spans = precompute.find_char_spans(prompts, entities)
    per_side = {}
    for side in ("left", "right"):
        inputs, offsets = precompute.tokenize(tokenizer, prompts, padding_side=side)
        padded = precompute.token_ranges_from_char_spans(spans, offsets, inputs.attention_mask)
        unpadded = precompute.unpad_token_ranges(padded, inputs.attention_mask)
        # Moving back into the padded batch is what hooks.padded_token_ranges does.
        assert torch.equal(hooks.padded_token_ranges(unpadded, inputs.attention_mask), padded)
        per_side[side] = unpadded
        rows = torch.arange(2)
        last = precompute.last_token_positions(inputs.attention_mask)
        assert tokenizer.decode(inputs.input_ids[rows, last]) == " in of"
    assert torch.equal(per_side["left"], per_side["right"])
    assert torch.equal(per_side["left"], precompute.find_token_ranges(tokenizer, prompts, entities))


def test_an_entity_missing_from_its_prompt_names_the_sample(tokenizer):
    with pytest.raises(ValueError, match=r"sample counterfact/7: 'Danu Revik' does not occur"):
        precompute.find_token_ranges(
            tokenizer,
            ["Xavi Bornadel speaks", "Mira lives in"],
            ["Xavi Bornadel", "Danu Revik"],
            names=["counterfact/6", "counterfact/7"],
        )


def test_target_token_ids_are_the_first_token_after_a_space(tokenizer):
    ids = precompute.target_token_ids(tokenizer, ["Spanish", "Oslo"])
    assert ids.tolist() == [
        tokenizer(" Spanish")["input_ids"][0],
        tokenizer(" Oslo")["input_ids"][0],
    ]


def _block_output(mt, text: str, layer: int) -> torch.Tensor:
    """Hidden states after block `layer` for one unpadded text (no hooks involved)."""
    inputs = mt.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        outputs = mt.model(**inputs, output_hidden_states=True)
    return outputs.hidden_states[layer + 1][0]


def assert_close_to_float32(stored: torch.Tensor, exact: torch.Tensor) -> None:
    """``stored`` (float32) is ``exact`` (float64) up to float32 rounding: the cast, and a mean
    over at most 16 tokens taken in float32, is off by at most 16 ulps of the largest value."""
    assert stored.dtype == torch.float32
    ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
    torch.testing.assert_close(stored.double(), exact, rtol=0, atol=16 * ulp)


def test_editor_inputs_match_unbatched_hidden_states(gpt2_model_float64, tokenizer):
    # float64: the padded batch and the single texts then differ by rounding (~1e-16) only;
    # what is left is the float32 storage of the inputs (see assert_close_to_float32).
    mt = ModelAndTokenizer(model=gpt2_model_float64, tokenizer=tokenizer, name="tiny-gpt2")
    inputs = precompute.editor_inputs(mt, SAMPLES, layers=[0], batch_size=2)

    assert inputs.ids == ["counterfact/1", "counterfact/2", "counterfact/3"]
    assert inputs.layers == (0,)
    for index, sample in enumerate(SAMPLES):
        # Attribute: mean over the attribute's tokens in the context.
        context_states = _block_output(mt, sample["context"], 0)
        start, end = precompute.find_token_ranges(
            mt.tokenizer, [sample["context"]], [sample["attribute"]]
        )[0].tolist()
        assert inputs.attribute_token_ranges[index].tolist() == [start, end]
        expected = context_states[start:end].mean(dim=0)
        assert_close_to_float32(inputs.attribute_hiddens[0][index], expected)
        assert_close_to_float32(inputs.attribute(0, last_token=True)[index], context_states[-1])
        # Entity: encoded on its own; last token, and mean over its tokens.
        entity_states = _block_output(mt, sample["entity"], 0)
        assert_close_to_float32(inputs.entity_hiddens(0)[index], entity_states[-1])
        assert_close_to_float32(
            inputs.entity_hiddens(0, last_token=False)[index], entity_states.mean(dim=0)
        )
        # Entity range in the prompt and the prompt's length, unpadded.
        prompt_ids = mt.tokenizer(sample["prompt"])["input_ids"]
        assert inputs.prompt_lengths[index] == len(prompt_ids)
        start, end = inputs.entity_token_ranges[index].tolist()
        assert mt.tokenizer.decode(prompt_ids[start:end]).strip() == sample["entity"]

    assert inputs.target_mediated_ids.tolist() == [
        mt.tokenizer(" " + sample["target_mediated"])["input_ids"][0] for sample in SAMPLES
    ]
    assert inputs.attribute_hiddens[0].dtype == torch.float32


# Texts of different lengths, given out of length order: the batches (of 2) are sorted.
VARIED_SAMPLES = [
    {
        "id": f"varied/{index}",
        "entity": entity,
        "prompt": f"{entity} {verb}",
        "context": context,
        "attribute": context.split(entity)[-1].strip(),
    }
    for index, (entity, verb, context) in enumerate(
        [
            ("Mira", "works as a", "Mira works as a painter and lives in the city of Lisbon"),
            ("Kelo Vantri", "lives in", "Kelo Vantri lives in Oslo"),
            ("Xavi Bornadel", "speaks", "The famous singer Xavi Bornadel speaks Spanish"),
            ("Danu Revik", "is a", "Danu Revik is a doctor"),
            ("Eiffel", "is in", "The Eiffel Tower is located in Paris, the capital of France"),
        ]
    )
]


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_editor_inputs_equal_each_texts_full_forward(tokenizer, model_type: str):
    # float64: batches of similar length cut short at the layer vs. each text's full forward
    # differ by rounding (~1e-16) only; what is left is the float32 storage of the inputs.
    model = tiny_model(model_type, vocab_size=len(tokenizer)).double()
    mt = ModelAndTokenizer(model=model, tokenizer=tokenizer, name=f"tiny-{model_type}")
    inputs = precompute.editor_inputs(mt, VARIED_SAMPLES, layers=[1, 0], batch_size=2)
    without_entities = precompute.editor_inputs(
        mt, VARIED_SAMPLES, layers=[1], batch_size=2, with_entities=False
    )
    assert inputs.ids == [sample["id"] for sample in VARIED_SAMPLES]
    assert without_entities.entity_last_hiddens == {}
    # Entities read at the start of their context, and entities run on their own.
    contexts = [sample["context"] for sample in VARIED_SAMPLES]
    entities = [sample["entity"] for sample in VARIED_SAMPLES]
    assert precompute.token_prefixes(tokenizer, contexts, entities) == [
        True,
        True,
        False,
        True,
        False,
    ]
    for index, sample in enumerate(VARIED_SAMPLES):
        start, end = inputs.attribute_token_ranges[index].tolist()
        for layer in (0, 1):
            context_states = _block_output(mt, sample["context"], layer)
            expected = context_states[start:end]
            assert_close_to_float32(inputs.attribute_hiddens[layer][index], expected.mean(dim=0))
            assert_close_to_float32(inputs.attribute(layer, last_token=True)[index], expected[-1])
            entity_states = _block_output(mt, sample["entity"], layer)
            assert_close_to_float32(inputs.entity_hiddens(layer)[index], entity_states[-1])
            assert_close_to_float32(
                inputs.entity_hiddens(layer, last_token=False)[index], entity_states.mean(dim=0)
            )
        assert torch.equal(
            without_entities.attribute_hiddens[1][index], inputs.attribute_hiddens[1][index]
        )


def test_token_prefixes_compare_tokens_not_only_characters(tokenizer, llama_tokenizer):
    texts = ["Mira works as a painter", "Miranda works", "The Mira", "Mira"]
    prefixes = ["Mira", "Mira", "Mira", "Mira"]
    # "Miranda" starts with the characters of "Mira" but not with its token.
    assert precompute.token_prefixes(tokenizer, texts, prefixes) == [True, False, False, True]
    # With BOS: "<s> Mira" starts "<s> Mira works as a painter".
    assert precompute.token_prefixes(llama_tokenizer, texts[:1], prefixes[:1]) == [True]


def test_editor_inputs_record_several_layers_and_select_rows(mt):
    import datasets

    dataset = datasets.Dataset.from_list(SAMPLES)
    inputs = precompute.editor_inputs(mt, dataset, layers=[1, 0])
    assert inputs.layers == (0, 1)
    assert not torch.equal(inputs.attribute_hiddens[0], inputs.attribute_hiddens[1])

    subset = inputs.select([2, 0])
    assert subset.ids == ["counterfact/3", "counterfact/1"]
    assert torch.equal(subset.attribute_hiddens[1][0], inputs.attribute_hiddens[1][2])
    assert torch.equal(subset.entity_token_ranges[1], inputs.entity_token_ranges[0])

    shuffled = list(inputs.batches(2, generator=torch.Generator().manual_seed(0)))
    assert [len(batch) for batch in shuffled] == [2, 1]
    assert sorted(id_ for batch in shuffled for id_ in batch.ids) == sorted(inputs.ids)


def test_editor_inputs_refuse_a_sample_whose_prompt_lacks_its_entity(mt):
    broken = [*SAMPLES[:2], {**SAMPLES[2], "prompt": "She works as a"}]
    with pytest.raises(ValueError, match="sample counterfact/3"):
        precompute.editor_inputs(mt, broken, layers=[0])


# ---------------------------------------------------------------------------------------
# A SentencePiece/Llama-style tokenizer that adds BOS.


def test_a_tokenizer_that_adds_bos_keeps_it_out_of_ranges_and_targets(llama_tokenizer):
    bos = llama_tokenizer.bos_token_id
    prompts = [sample["prompt"] for sample in SAMPLES]
    entities = [sample["entity"] for sample in SAMPLES]
    ranges = precompute.find_token_ranges(llama_tokenizer, prompts, entities)
    for prompt, entity, (start, end) in zip(prompts, entities, ranges.tolist(), strict=True):
        ids = llama_tokenizer(prompt)["input_ids"]
        assert ids[0] == bos and bos not in ids[1:]
        # The mention's tokens, and only they, decode to the entity; BOS is not one of them.
        assert start >= 1
        assert llama_tokenizer.decode(ids[start:end]) == entity
        assert llama_tokenizer.decode(ids[start + 1 : end]) != entity

    targets = [sample["target_mediated"] for sample in SAMPLES]
    target_ids = precompute.target_token_ids(llama_tokenizer, targets)
    for prompt, target, target_id in zip(prompts, targets, target_ids.tolist(), strict=True):
        assert target_id != bos
        # The target's first token is the one that follows the prompt in "prompt target".
        prompt_ids = llama_tokenizer(prompt)["input_ids"]
        continued = llama_tokenizer(f"{prompt} {target}")["input_ids"]
        assert continued[: len(prompt_ids)] == prompt_ids
        assert target_id == continued[len(prompt_ids)]


def test_editor_inputs_with_bos_match_unbatched_hidden_states(llama_tokenizer):
    # float64: the padded batch and the single texts differ by rounding only; what is left is
    # the float32 storage of the inputs (see assert_close_to_float32).
    model = tiny_llama(llama_tokenizer).double()
    mt = ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")
    inputs = precompute.editor_inputs(mt, SAMPLES, layers=[1], batch_size=2)
    bos = llama_tokenizer.bos_token_id

    for index, sample in enumerate(SAMPLES):
        prompt_ids = llama_tokenizer(sample["prompt"])["input_ids"]
        assert inputs.prompt_lengths[index] == len(prompt_ids)  # BOS counts: it is an input
        start, end = inputs.entity_token_ranges[index].tolist()
        assert start >= 1 and llama_tokenizer.decode(prompt_ids[start:end]) == sample["entity"]

        context_ids = llama_tokenizer(sample["context"])["input_ids"]
        start, end = inputs.attribute_token_ranges[index].tolist()
        assert start >= 1
        assert llama_tokenizer.decode(context_ids[start:end]) == sample["attribute"]
        context_states = _block_output(mt, sample["context"], 1)
        assert_close_to_float32(
            inputs.attribute_hiddens[1][index], context_states[start:end].mean(0)
        )

        # The entity alone is "<s> entity": its mean leaves BOS out, its last token is the
        # entity's.
        entity_ids = llama_tokenizer(sample["entity"])["input_ids"]
        assert entity_ids[0] == bos
        entity_states = _block_output(mt, sample["entity"], 1)
        assert_close_to_float32(inputs.entity_hiddens(1)[index], entity_states[-1])
        assert_close_to_float32(
            inputs.entity_hiddens(1, last_token=False)[index], entity_states[1:].mean(dim=0)
        )

    assert bos not in inputs.target_mediated_ids.tolist()
    assert inputs.target_mediated_ids.tolist() == [
        llama_tokenizer(f"{sample['prompt']} {sample['target_mediated']}")["input_ids"][
            len(llama_tokenizer(sample["prompt"])["input_ids"])
        ]
        for sample in SAMPLES
    ]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("which", ["byte-level BPE", "Llama-style"])
def test_tokenize_pads_as_the_tokenizer_does(tokenizer, llama_tokenizer, which, padding_side):
    chosen = tokenizer if which == "byte-level BPE" else llama_tokenizer
    texts = [sample["context"] for sample in VARIED_SAMPLES]
    expected = chosen(
        texts,
        return_offsets_mapping=True,
        padding="longest",
        return_tensors="pt",
        padding_side=padding_side,
    )
    inputs, offsets = precompute.tokenize(chosen, texts, padding_side=padding_side)
    assert set(inputs) == set(expected) - {"offset_mapping"}
    for key in inputs:
        assert torch.equal(inputs[key], expected[key]), key
    assert torch.equal(offsets, expected["offset_mapping"])


def test_tokenize_without_a_pad_token_says_how_to_set_one(tokenizer):
    unpadded = copy.deepcopy(tokenizer)
    unpadded.pad_token = None
    with pytest.raises(ValueError, match=r"tokenizer\.pad_token"):
        precompute.tokenize(unpadded, ["Mira works", "Kelo Vantri lives in Oslo"])
