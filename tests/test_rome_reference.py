"""ROME as kmeng01/rome runs it by default: 20 random prefixes sampled after the end-of-text
token (``rome/rome_main.py:154-177``, ``hparams/ROME/*.json:13``) and the bare prompt's key in
the closed form's residual (tested in ``test_weight_methods.py``); MEMIT's start words kept as
an option, exactly as they were sampled before."""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

import pytest
import torch

from remedi import errors, models
from remedi.methods import common, hparams_file, memit, rome
from tests.conftest import weighty_gpt2
from tests.model_fixtures import tiny_llama

REFERENCE_LENGTHS = [[5, 10], [10, 10]]


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


@pytest.fixture(scope="module")
def llama(llama_tokenizer) -> models.ModelAndTokenizer:
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).requires_grad_(False)
    return models.ModelAndTokenizer(model=model, tokenizer=llama_tokenizer, name="tiny-llama")


def without_tokens(mt: models.ModelAndTokenizer, *names: str) -> models.ModelAndTokenizer:
    """``mt`` with a tokenizer that lacks the special tokens ``names`` (e.g. ``"eos_token"``)."""
    tokenizer = copy.deepcopy(mt.tokenizer)
    for name in names:
        setattr(tokenizer, name, None)
    return models.ModelAndTokenizer(model=mt.model, tokenizer=tokenizer, name=mt.name)


def recorded_inputs(mt: models.ModelAndTokenizer, lengths: Any, source: str) -> tuple:
    """The prefixes of ``source`` and the ``input_ids`` of every forward pass that sampled them."""
    inputs: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(kwargs["input_ids"].detach().clone())

    handle = mt.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        templates = common.context_templates(mt, lengths, seed=0, source=source)
    finally:
        handle.remove()
    return templates, inputs


def old_start_word_templates(
    mt: models.ModelAndTokenizer, lengths: list[list[int]], seed: int
) -> list[str]:
    """The prefixes as ``common.context_templates`` sampled them before ROME's own became the
    default (MEMIT's start words; the code of commit 8fe9acb, restated)."""
    templates = ["{}"]
    tokenizer = mt.tokenizer
    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for length, count in lengths:
            starts = [
                common.CONTEXT_TEMPLATE_STARTS[i % len(common.CONTEXT_TEMPLATE_STARTS)]
                for i in range(count)
            ]
            rng.shuffle(starts)
            inputs = tokenizer(starts, return_tensors="pt", padding=True, padding_side="left")
            generate: Any = mt.model.generate
            with torch.no_grad():
                generated = generate(
                    **inputs,
                    do_sample=True,
                    top_k=5,
                    max_new_tokens=max(1, int(length) - inputs.input_ids.shape[1]),
                    pad_token_id=tokenizer.pad_token_id,
                )
            for text in tokenizer.batch_decode(generated, skip_special_tokens=True):
                templates.append(text.replace("{", " ").replace("}", " ").strip() + ". {}")
    return templates


def test_rome_defaults_and_packaged_files_are_kmeng01s():
    defaults = rome.RomeHparams(layer=5)
    assert defaults.context_template_lengths == REFERENCE_LENGTHS
    assert (defaults.prefix_source, defaults.key_in_residual) == ("eos", "bare")
    for model in ("gpt2", "gpt2-xl", "gptj", "toy", "smollm2-135m"):
        packaged = rome.RomeHparams.from_file(hparams_file("rome", model))
        assert packaged.context_template_lengths == REFERENCE_LENGTHS, model
        assert (packaged.prefix_source, packaged.key_in_residual) == ("eos", "bare"), model
        assert packaged.to_dict()["prefix_source"] == "eos"  # recorded with every result
    # Gu et al. ran EasyEdit's ROME: its start words (rome_main.py:214), kmeng01's closed form.
    easyedit = rome.RomeHparams.from_file(hparams_file("rome", "gpt2-xl", "gu2024"))
    assert (easyedit.prefix_source, easyedit.key_in_residual) == ("start_words", "bare")
    # MEMIT keeps its own: five prefixes of 10 tokens after its start words
    # (kmeng01/memit memit/memit_main.py:300-305).
    for hparams in (
        memit.MemitHparams(layers=[3]),
        memit.MemitHparams.from_file(hparams_file("memit", "gptj")),
    ):
        assert hparams.context_template_lengths == [[10, 5]]
        assert hparams.prefix_source == "start_words"


def test_unknown_prefix_sources_and_closed_forms_are_refused(mt):
    with pytest.raises(errors.UsageError, match="prefix_source must be one of eos, start_words"):
        rome.RomeHparams(layer=0, prefix_source="bos")
    with pytest.raises(errors.UsageError, match="key_in_residual must be one of bare, mean"):
        rome.RomeHparams(layer=0, key_in_residual="average")
    with pytest.raises(errors.UsageError, match="prefix_source must be one of"):
        memit.MemitHparams(layers=[0], prefix_source="EOS")
    with pytest.raises(errors.UsageError, match="prefix source must be one of"):
        common.context_templates(mt, [[5, 1]], source="words")


def test_default_prefixes_are_twenty_sampled_after_end_of_text(mt):
    templates, inputs = recorded_inputs(mt, REFERENCE_LENGTHS, "eos")
    assert templates == common.prefix_templates(mt, rome.RomeHparams(layer=0))
    assert len(templates) == 1 + 10 + 10 and templates[0] == "{}"
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in templates[1:])
    eos = mt.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert eos == mt.tokenizer.eos_token_id
    # Ten sequences of 5 tokens, then ten of 10, the end-of-text token included: each pass
    # sees the sequence so far, which always starts with end-of-text alone.
    assert [tuple(ids.shape) for ids in inputs] == [(10, n) for n in (*range(1, 5), *range(1, 10))]
    assert all(bool((ids[:, 0] == eos).all()) for ids in inputs)
    assert all(bool((ids[:, 1:] != eos).any()) for ids in inputs if ids.shape[1] > 1)
    # Each prefix is the text sampled in its row (decoded, end-of-text removed, not stripped).
    last_short, last_long = inputs[3], inputs[-1]
    for row, template in enumerate(templates[1:]):
        ids = last_short[row] if row < 10 else last_long[row - 10]
        sampled = mt.tokenizer.decode(ids).replace(mt.tokenizer.eos_token, "")
        assert template.startswith(sampled) and mt.tokenizer.eos_token not in template
    assert templates != common.context_templates(mt, REFERENCE_LENGTHS, 0, "start_words")
    assert templates == common.context_templates(mt, REFERENCE_LENGTHS, 0, "eos")  # seeded


@pytest.mark.parametrize("lengths", [[[10, 5]], REFERENCE_LENGTHS])
def test_the_start_words_option_samples_the_old_prefixes(mt, lengths):
    templates = common.context_templates(mt, lengths, seed=3, source="start_words")
    assert templates == old_start_word_templates(mt, lengths, seed=3)
    hparams = rome.RomeHparams(
        layer=0, context_template_lengths=lengths, prefix_source="start_words", seed=3
    )
    assert common.prefix_templates(mt, hparams) == templates


def test_a_tokenizer_without_end_of_text_samples_after_eos_then_bos_and_says_so(llama, caplog):
    # Llama's tokenizer has no <|endoftext|>: its EOS </s> starts the prefixes (logged), else its
    # BOS (a warning), else MEMIT's start words (a warning).
    tokenizer = llama.tokenizer
    assert common.END_OF_TEXT not in tokenizer.all_special_tokens
    with caplog.at_level(logging.INFO, logger="remedi.methods.common"):
        templates, inputs = recorded_inputs(llama, [[4, 3]], "eos")
    assert "sampled after its EOS token '</s>'" in caplog.text
    assert len(templates) == 4
    assert all(bool((ids[:, 0] == tokenizer.eos_token_id).all()) for ids in inputs)

    caplog.clear()
    no_eos = without_tokens(llama, "eos_token")
    with caplog.at_level(logging.WARNING, logger="remedi.methods.common"):
        templates, inputs = recorded_inputs(no_eos, [[4, 3]], "eos")
    assert "no end-of-text token" in caplog.text and "BOS token '<s>'" in caplog.text
    assert all(bool((ids[:, 0] == tokenizer.bos_token_id).all()) for ids in inputs)

    caplog.clear()
    neither = without_tokens(llama, "eos_token", "bos_token")
    with caplog.at_level(logging.WARNING, logger="remedi.methods.common"):
        templates = common.context_templates(neither, [[6, 3]], seed=0, source="eos")
    assert "neither an end-of-text nor a BOS token" in caplog.text
    assert templates == common.context_templates(neither, [[6, 3]], seed=0, source="start_words")


def test_end_of_text_comes_before_a_chat_eos(mt):
    # SmolLM2's converted tokenizer: EOS is the chat's <|im_end|>, <|endoftext|> (its pretraining
    # documents' separator, what the reference samples after) only its UNK.
    tokenizer = copy.deepcopy(mt.tokenizer)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>"})
    assert tokenizer.eos_token_id != tokenizer.convert_tokens_to_ids(common.END_OF_TEXT)
    assert common.prefix_start_token(tokenizer) == tokenizer.convert_tokens_to_ids("<|endoftext|>")
