"""Tests for remedi.hooks: recording and editing the residual stream."""

from __future__ import annotations

import contextlib
import copy
import inspect

import pytest
import torch
import transformers

from remedi import hooks, models
from tests.model_fixtures import tiny_model
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

PROMPTS = ["Mira Talovan lives in the city of Lisbon", "Kelo Vantri works"]
# Families whose decoder blocks return a tensor (gpt2, gpt_neox, llama) or a tuple (gptj).
HOOK_FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama"]


@pytest.fixture(scope="module")
def family_models(tokenizer) -> dict[str, transformers.PreTrainedModel]:
    return {
        model_type: tiny_model(model_type, vocab_size=len(tokenizer))
        for model_type in HOOK_FAMILIES
    }


@pytest.fixture(scope="module")
def family_models_float64(family_models) -> dict[str, transformers.PreTrainedModel]:
    """The same models in float64, for comparisons that hold only in exact arithmetic."""
    return {name: copy.deepcopy(model).double() for name, model in family_models.items()}


@pytest.fixture()
def gpt2_float64(gpt2_model) -> transformers.PreTrainedModel:
    return copy.deepcopy(gpt2_model).double()


def encode(tokenizer, prompts: list[str], padding_side: str) -> transformers.BatchEncoding:
    original_side, tokenizer.padding_side = tokenizer.padding_side, padding_side
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = original_side


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row matches the same row run alone."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def logits_of(model, inputs, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=position_ids(inputs["attention_mask"]),
            **kwargs,
        ).logits


def assert_no_hooks(model: torch.nn.Module) -> None:
    """No remedi hook is left on any module.

    transformers 5 keeps hooks of its own on decoder blocks (they collect
    output_hidden_states), so the check is on the hooks' origin, not on emptiness.
    """
    for name, module in model.named_modules():
        for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]:
            assert hook.__module__ != hooks.__name__, f"remedi hook left on {name or 'model'}"


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("model_type", HOOK_FAMILIES)
def test_record_hiddens_equal_output_hidden_states(
    family_models, tokenizer, model_type: str, padding_side: str
):
    model = family_models[model_type]
    inputs = encode(tokenizer, PROMPTS, padding_side)
    layers = models.determine_layers(model)
    with hooks.record_hiddens(model, layers) as hiddens:
        outputs = model(**inputs, output_hidden_states=True)
    assert set(hiddens) == set(layers)
    # The last entry of hidden_states has the final layer norm applied; the others are the
    # raw block outputs.
    for layer in layers[:-1]:
        torch.testing.assert_close(hiddens[layer], outputs.hidden_states[layer + 1])
    assert hiddens[layers[-1]].shape == outputs.hidden_states[-1].shape
    assert_no_hooks(model)


def test_record_hiddens_last_layer_is_pre_final_norm(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    with hooks.record_hiddens(gpt2_model, [1]) as hiddens, torch.no_grad():
        outputs = gpt2_model(**inputs, output_hidden_states=True)
    final_norm = gpt2_model.transformer.ln_f
    torch.testing.assert_close(final_norm(hiddens[1]), outputs.hidden_states[-1])


@pytest.mark.parametrize("model_type", HOOK_FAMILIES)
def test_zero_direction_changes_nothing(family_models, tokenizer, model_type: str):
    model = family_models[model_type]
    inputs = encode(tokenizer, PROMPTS, "left")
    unedited = logits_of(model, inputs)
    directions = torch.zeros(2, models.determine_hidden_size(model))
    ranges = torch.tensor([[0, 5], [1, 3]])
    with hooks.add_directions(model, 1, directions, ranges, alpha=10.0):
        edited = logits_of(model, inputs)
    # Exact: the hook adds exact zeros, and the same batch runs through the same kernels.
    torch.testing.assert_close(edited, unedited, rtol=0, atol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("model_type", HOOK_FAMILIES)
def test_edit_changes_only_its_example_from_its_range_on(
    family_models_float64, tokenizer, model_type: str, padding_side: str
):
    # float64: the padded batch and the example run alone (below) differ by rounding only.
    model = family_models_float64[model_type]
    inputs = encode(tokenizer, PROMPTS, padding_side)
    attention_mask = inputs["attention_mask"]
    assert attention_mask[1].sum() < attention_mask.shape[1], "row 1 must be padded"
    torch.manual_seed(1)
    directions = torch.randn(2, models.determine_hidden_size(model)) * 5
    # Row 0 gets a direction but an empty range: it must stay untouched too.
    start, end = 1, 3
    ranges = hooks.padded_token_ranges(torch.tensor([[2, 2], [start, end]]), attention_mask)

    unedited = logits_of(model, inputs)
    with hooks.add_directions(model, 0, directions, ranges):
        edited = logits_of(model, inputs)
    assert_no_hooks(model)

    # Exact: an empty range adds exact zeros to row 0, and causal masking gives the edited
    # tokens exactly zero weight before the range.
    torch.testing.assert_close(edited[0], unedited[0], rtol=0, atol=0)
    real_positions = attention_mask[1].nonzero().squeeze(1)
    changed = (edited[1] - unedited[1]).abs().amax(dim=-1)[real_positions]
    assert (changed[:start] == 0).all(), "tokens before the range must not change"
    assert (changed[start:] > 1e-4).all(), "every token from the range on must change"

    # The edit lands on the same tokens as when the example runs alone, unpadded.
    alone = tokenizer(PROMPTS[1:], return_tensors="pt")
    with hooks.add_directions(model, 0, directions[1:], torch.tensor([[start, end]])):
        edited_alone = logits_of(model, alone)
    assert_equal_in_exact_arithmetic(
        edited[1, real_positions], edited_alone[0], precision_of(model)
    )


def test_directions_keep_their_gradient(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    directions = torch.randn(2, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ranges = torch.tensor([[1, 3], [0, 0]])
    with hooks.add_directions(gpt2_model, 0, directions, ranges, alpha=2.0):
        logits = gpt2_model(**inputs).logits
    (gradient,) = torch.autograd.grad(logits.logsumexp(-1).sum(), directions)
    assert gradient[0].abs().sum() > 0
    assert (gradient[1] == 0).all(), "a row with an empty range gets no gradient"


def test_one_token_prompt_is_edited(gpt2_model, tokenizer):
    input_ids = tokenizer(" Lisbon", return_tensors="pt")["input_ids"][:, :1]
    direction = torch.randn(1, 32, generator=torch.Generator().manual_seed(0)) * 5
    with torch.no_grad():
        unedited = gpt2_model(input_ids).logits
        with hooks.add_directions(gpt2_model, 0, direction, torch.tensor([[0, 1]])):
            edited = gpt2_model(input_ids).logits
    assert (edited - unedited).abs().max() > 1e-3


def cache_kwargs(model, past) -> dict:
    """The KV cache as this transformers version's forward takes it (``cache`` since 5.24)."""
    if past is None:
        return {}
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: past}


def greedy_with_cache(model, input_ids, steps: int, edit_step) -> list[int]:
    """Greedy decoding by hand; `edit_step(i)` is a context manager wrapping step i."""
    tokens: list[int] = []
    past, next_input = None, input_ids
    with torch.no_grad():
        for step in range(steps):
            with edit_step(step):
                outputs = model(next_input, use_cache=True, **cache_kwargs(model, past))
            past = outputs.get("cache", outputs.get("past_key_values"))
            next_token = outputs.logits[:, -1].argmax(-1)
            tokens.append(int(next_token))
            next_input = next_token[:, None]
    return tokens


def test_generation_edits_the_prompt_but_not_the_cached_steps(gpt2_float64, tokenizer):
    # float64: generate() and the loop by hand take the same greedy tokens unless two logits
    # tie to rounding, which float32 makes possible on some CPU and float64 does not.
    gpt2_model = gpt2_float64
    input_ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    steps = 6
    direction = torch.randn(1, 32, generator=torch.Generator().manual_seed(3)) * 20
    # The range starts at 0: a one-token cached step, whose only position is 0 in its own
    # call, would be edited too if the hook did not skip it. It covers the whole prompt so
    # that the edit reaches the next-token prediction of this random model.
    ranges = torch.tensor([[0, input_ids.shape[1]]])

    def edit() -> contextlib.AbstractContextManager[None]:
        return hooks.add_directions(gpt2_model, 0, direction, ranges)

    def generate() -> list[int]:
        with torch.no_grad():
            output = gpt2_model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return output[0, input_ids.shape[1] :].tolist()

    with edit():
        generated = generate()
    assert_no_hooks(gpt2_model)

    no_edit = contextlib.nullcontext
    prompt_only = greedy_with_cache(
        gpt2_model, input_ids, steps, lambda step: edit() if step == 0 else no_edit()
    )
    every_step = greedy_with_cache(gpt2_model, input_ids, steps, lambda step: edit())
    unedited = greedy_with_cache(gpt2_model, input_ids, steps, lambda step: no_edit())
    assert generated == prompt_only
    assert prompt_only != every_step, "test too weak: editing cached steps changes nothing"
    assert prompt_only != unedited, "test too weak: the edit changes nothing"


def test_batch_repeated_by_generate_gets_each_rows_direction(gpt2_float64, tokenizer):
    # A batch of 4 and a batch of 2 differ by rounding only.
    gpt2_model = gpt2_float64
    inputs = encode(tokenizer, PROMPTS, "right")
    directions = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 5
    ranges = torch.tensor([[0, 2], [1, 2]])
    with hooks.add_directions(gpt2_model, 0, directions, ranges), torch.no_grad():
        edited = gpt2_model(**inputs).logits
        # generate() with num_return_sequences=2 repeats each row twice, row by row.
        repeated = {key: value.repeat_interleave(2, dim=0) for key, value in inputs.items()}
        edited_repeated = gpt2_model(**repeated).logits
    precision = precision_of(gpt2_model)
    assert_equal_in_exact_arithmetic(edited_repeated[::2], edited, precision)
    assert_equal_in_exact_arithmetic(edited_repeated[1::2], edited, precision)


def test_batch_mismatch_and_bad_shapes_raise(gpt2_model, tokenizer):
    inputs = encode(tokenizer, [*PROMPTS, "Xavi"], "right")
    directions, ranges = torch.zeros(2, 32), torch.tensor([[0, 1], [0, 1]])
    with (
        pytest.raises(ValueError, match="batch of 3 but 2 directions"),
        hooks.add_directions(gpt2_model, 0, directions, ranges),
    ):
        gpt2_model(**inputs)
    assert_no_hooks(gpt2_model)
    with pytest.raises(ValueError, match=r"\(batch, hidden\)"):
        hooks.add_directions(gpt2_model, 0, torch.zeros(32), ranges).__enter__()
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        hooks.add_directions(gpt2_model, 2, directions, ranges).__enter__()
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        hooks.record_hiddens(gpt2_model, [0, 5]).__enter__()
    assert_no_hooks(gpt2_model)


def test_hooks_are_removed_when_the_body_raises(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    directions, ranges = torch.ones(2, 32), torch.tensor([[0, 1], [0, 1]])
    with pytest.raises(RuntimeError, match="boom"), hooks.record_hiddens(gpt2_model, [0, 1]):
        gpt2_model(**inputs)
        raise RuntimeError("boom")
    assert_no_hooks(gpt2_model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks.add_directions(gpt2_model, 1, directions, ranges),
    ):
        gpt2_model(**inputs)
        raise RuntimeError("boom")
    assert_no_hooks(gpt2_model)


def test_padded_token_ranges_left_and_right():
    ranges = torch.tensor([[0, 2], [1, 3]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hooks.padded_token_ranges(ranges, left).tolist() == [[2, 4], [1, 3]]
    assert hooks.padded_token_ranges(ranges, right).tolist() == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="one range per example"):
        hooks.padded_token_ranges(ranges, left[:1])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_padded_token_ranges_point_at_the_same_tokens(tokenizer, padding_side: str):
    unpadded = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    ranges = torch.tensor([[1, 3], [0, 2]])
    inputs = encode(tokenizer, PROMPTS, padding_side)
    padded = hooks.padded_token_ranges(ranges, inputs["attention_mask"])
    for row, ((start, end), (padded_start, padded_end)) in enumerate(
        zip(ranges.tolist(), padded.tolist(), strict=True)
    ):
        assert (
            inputs["input_ids"][row, padded_start:padded_end].tolist() == (unpadded[row][start:end])
        )


@pytest.mark.parametrize("model_type", HOOK_FAMILIES)
def test_run_until_layer_runs_nothing_above_the_layer(
    family_models_float64, tokenizer, model_type: str
):
    model = family_models_float64[model_type]
    inputs = encode(tokenizer, PROMPTS, "right")
    ran: list[str] = []
    watched = {"block 2": models.resolve_layer(model, 2), "head": model.get_output_embeddings()}
    handles = [
        module.register_forward_hook(lambda *_, name=name: ran.append(name))
        for name, module in watched.items()
    ]
    try:
        with torch.no_grad(), hooks.record_hiddens(model, [0, 1]) as hiddens:
            hooks.run_until_layer(model, 1, inputs)
        assert ran == []
        with torch.no_grad():
            outputs = model(**inputs, output_hidden_states=True)
        assert ran == ["block 2", "head"]
    finally:
        for handle in handles:
            handle.remove()
    # The same computation, cut short: it differs by rounding at most.
    for layer in (0, 1):
        assert_equal_in_exact_arithmetic(
            hiddens[layer], outputs.hidden_states[layer + 1], precision_of(model)
        )
    assert_no_hooks(model)


def test_run_until_layer_removes_its_hook_when_the_model_raises(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    inputs["input_ids"][0, 0] = gpt2_model.config.vocab_size  # not a token of the model
    with pytest.raises(IndexError):
        hooks.run_until_layer(gpt2_model, 0, inputs)
    assert_no_hooks(gpt2_model)


# ---------------------------------------------------------------------------------------------
# The primitive every hook goes through: hooks.trace.


def test_trace_retains_each_modules_input_and_output(gpt2_float64, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    block = gpt2_float64.transformer.h[0]
    with torch.no_grad():
        outputs = gpt2_float64(**inputs, output_hidden_states=True)
        with hooks.trace(
            gpt2_float64,
            {"block": block, "proj": "transformer.h.0.mlp.c_proj"},
            retain_input=True,
            retain_output=True,
        ) as traced:
            gpt2_float64(**inputs)
    # A block's input is the residual stream before it, its output (first of a tuple or the
    # tensor itself, whatever the transformers version) the residual stream after it (the last
    # of hidden_states is after the final norm, so block 0 of 2 is checked).
    torch.testing.assert_close(traced["block"].input, outputs.hidden_states[0])
    torch.testing.assert_close(traced["block"].output, outputs.hidden_states[1])
    mlp = block.mlp
    with torch.no_grad(), hooks.trace(gpt2_float64, {"fc": mlp.c_fc}, retain_output=True) as fc:
        gpt2_float64(**inputs)
    assert fc["fc"].output is not None
    keys = mlp.act(fc["fc"].output)
    torch.testing.assert_close(traced["proj"].output, mlp.c_proj(keys))
    assert_no_hooks(gpt2_float64)


def test_trace_retains_with_or_without_the_graph(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    block = gpt2_model.transformer.h[0]
    with hooks.trace(gpt2_model, {0: block}, retain_output=True) as kept:
        gpt2_model(**inputs)
    with hooks.trace(gpt2_model, {0: block}, retain_output=True, detach=True) as detached:
        gpt2_model(**inputs)
    assert kept[0].output is not None and kept[0].output.requires_grad
    assert detached[0].output is not None and not detached[0].output.requires_grad
    assert kept[0].input is None  # only what was asked for is kept


def test_trace_edits_outputs_and_inputs(gpt2_float64, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    with torch.no_grad():
        clean = gpt2_float64(**inputs, output_hidden_states=True)
    blocks = {layer: gpt2_float64.transformer.h[layer] for layer in (0, 1)}
    seen: list[int] = []

    def zero_first_block(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
        seen.append(layer)
        return torch.zeros_like(hidden) if layer == 0 else None

    with (
        torch.no_grad(),
        hooks.trace(
            gpt2_float64,
            blocks,
            edit_output=zero_first_block,
            retain_input=True,
            retain_output=True,
        ) as zeroed_stream,
    ):
        zeroed = gpt2_float64(**inputs)
    assert seen == [0, 1]  # called on every traced module, in the order they run
    # The edited output is what is retained, and what the next block reads.
    assert zeroed_stream[0].output is not None and torch.all(zeroed_stream[0].output == 0)
    assert zeroed_stream[1].input is not None and torch.all(zeroed_stream[1].input == 0)
    # Block 1 now reads the zeroed stream: the same as feeding it zeros as its input.
    with (
        torch.no_grad(),
        hooks.trace(
            gpt2_float64,
            {1: blocks[1]},
            edit_input=lambda layer, hidden: torch.zeros_like(hidden),
            retain_input=True,
        ) as traced,
    ):
        fed_zeros = gpt2_float64(**inputs)
    assert traced[1].input is not None and torch.all(traced[1].input == 0)  # the edited input
    torch.testing.assert_close(fed_zeros.logits, zeroed.logits)
    assert not torch.allclose(zeroed.logits, clean.logits)
    with torch.no_grad():
        after = gpt2_float64(**inputs).logits
    torch.testing.assert_close(after, clean.logits, rtol=0, atol=0)  # nothing left behind
    assert_no_hooks(gpt2_float64)


def test_trace_stops_the_forward_once_every_traced_module_ran(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    ran: list[str] = []
    handle = gpt2_model.get_output_embeddings().register_forward_hook(lambda *_: ran.append("head"))
    try:
        modules = {"proj": "transformer.h.0.mlp.c_proj", "block": "transformer.h.0"}
        with (
            torch.no_grad(),
            hooks.trace(gpt2_model, modules, retain_input=True, stop=True) as traced,
        ):
            gpt2_model(**inputs)
            ran.append("after the forward")  # not reached: the stop ends the body too
        assert ran == []
        assert traced["proj"].input is not None and traced["block"].input is not None
        # Twice in a row: each forward pass stops again.
        with torch.no_grad(), hooks.trace(gpt2_model, {"block": modules["block"]}, stop=True):
            gpt2_model(**inputs)
        with torch.no_grad(), hooks.trace(gpt2_model, {"block": modules["block"]}, stop=True):
            gpt2_model(**inputs)
        assert ran == []
        with torch.no_grad():
            gpt2_model(**inputs)
        assert ran == ["head"]
    finally:
        handle.remove()
    # Each forward pass of the model counts anew: the head run alone before it (not a pass of
    # the model) does not make the next pass stop before its own head.
    modules = {"block": "transformer.h.0", "head": "lm_head"}
    with torch.no_grad(), hooks.trace(gpt2_model, modules, retain_output=True, stop=True) as seen:
        gpt2_model.lm_head(torch.zeros(1, 1, gpt2_model.config.n_embd))
        gpt2_model(**inputs)
    assert seen["head"].output is not None
    assert seen["head"].output.shape[:2] == inputs["input_ids"].shape
    # A trace that does not stop lets a StopForward raised inside it through.
    with pytest.raises(hooks.StopForward), hooks.trace(gpt2_model, {0: "transformer.h.0"}):
        raise hooks.StopForward
    assert_no_hooks(gpt2_model)


def test_trace_removes_every_hook_when_the_body_or_a_hook_raises(gpt2_model, tokenizer):
    inputs = encode(tokenizer, PROMPTS, "right")
    modules = {"block": "transformer.h.0", "proj": "transformer.h.1.mlp.c_proj"}
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks.trace(
            gpt2_model,
            modules,
            retain_input=True,
            retain_output=True,
            edit_input=lambda key, tensor: None,
            edit_output=lambda key, tensor: None,
        ),
    ):
        gpt2_model(**inputs)
        raise RuntimeError("boom")
    assert_no_hooks(gpt2_model)

    def fail(key: str, tensor: torch.Tensor) -> None:
        raise ValueError(f"bad {key}")

    with (
        pytest.raises(ValueError, match="bad block"),
        hooks.trace(gpt2_model, modules, edit_output=fail),
    ):
        gpt2_model(**inputs)
    assert_no_hooks(gpt2_model)
    # A wrong name fails before anything is registered.
    with (
        pytest.raises(AttributeError),
        hooks.trace(gpt2_model, {"nothing": "transformer.h.9"}, retain_output=True),
    ):
        pass
    assert_no_hooks(gpt2_model)
