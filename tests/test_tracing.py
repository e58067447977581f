"""Causal tracing on tiny GPT-2, GPT-J, GPT-NeoX and Llama models: restoration, noise, batching,
runs after the corrupted prefix, hooks, errors."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch
import transformers

from remedi import errors, hooks, io, models, tracing
from tests.conftest import tiny_gpt2
from tests.model_fixtures import tiny_llama, tiny_model
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of

PROMPT = "Mira Talovan lives in the city of"
SUBJECT = "Mira Talovan"
TARGET = "Lisbon"


@pytest.fixture(scope="module")
def mt64(tokenizer) -> models.ModelAndTokenizer:
    """float64: batched and one-at-a-time runs agree only in exact arithmetic."""
    model = tiny_gpt2(tokenizer, initializer_range=0.2).double().requires_grad_(False)
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name="tiny-gpt2-64")


def settings(**overrides: object) -> tracing.TraceSettings:
    values: dict = {"noise_scale": 0.5, "num_samples": 4, "kinds": list(tracing.KINDS)}
    values.update(overrides)
    return tracing.TraceSettings(**values)


def hook_count(model: torch.nn.Module) -> int:
    """Forward hooks on the model (transformers may add its own, for output_hidden_states)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_restoring_every_state_recovers_the_clean_probability(mt64):
    hooks = hook_count(mt64.model)
    ids, token_range = tracing.subject_token_range(mt64.tokenizer, PROMPT, SUBJECT)
    input_ids = torch.tensor([ids])
    target_id = int(mt64.tokenizer(" " + TARGET, add_special_tokens=False)["input_ids"][0])
    clean, states = tracing.clean_states(mt64, input_ids, ["residual"])
    noise = tracing.subject_noise(4, token_range[1] - token_range[0], mt64.hidden_size, 2.0, 0)
    everything = torch.ones(1, mt64.num_layers, len(ids), dtype=torch.bool)
    nothing = torch.zeros_like(everything)
    probs = tracing.restored_probs(
        mt64,
        input_ids,
        target_id,
        token_range,
        noise,
        "residual",
        torch.cat([everything, nothing]),
        states,
    )
    # The restored run's last hidden state is the clean one, up to batch-size rounding.
    assert_equal_in_exact_arithmetic(probs[0], clean[target_id], precision_of(mt64))
    assert abs(probs[1].item() - clean[target_id].item()) > 1e-6  # the noise does matter
    assert hook_count(mt64.model) == hooks


def test_noise_scale_is_three_standard_deviations_of_subject_embeddings(mt64):
    subjects = ["Mira Talovan", "Kelo Vantri", "Mira Talovan"]
    ids = [i for s in ["Mira Talovan", "Kelo Vantri"] for i in mt64.tokenizer(s)["input_ids"]]
    weight = mt64.model.get_input_embeddings().weight[ids]
    expected = 3 * float(weight.double().flatten().std())
    assert tracing.noise_scale_for(mt64, subjects) == pytest.approx(expected, rel=1e-12)
    assert tracing.embedding_std(mt64, subjects) == pytest.approx(expected / 3, rel=1e-12)
    # As ROME: every listed subject counts, a repeated one as often as it is listed.
    repeated = [i for s in subjects for i in mt64.tokenizer(s)["input_ids"]]
    weight = mt64.model.get_input_embeddings().weight[repeated]
    as_rome = float(weight.double().flatten().std())
    assert tracing.embedding_std(mt64, subjects, distinct=False) == pytest.approx(as_rome)
    assert as_rome != pytest.approx(expected / 3, rel=1e-6)
    assert tracing.noise_scale_for(mt64, subjects, distinct=False) == pytest.approx(3 * as_rome)


def test_batched_trace_equals_one_restoration_at_a_time(mt64):
    hooks = hook_count(mt64.model)
    traced = settings(windows=[1, 3])
    batched = tracing.trace_prompt(mt64, PROMPT, SUBJECT, TARGET, traced, require_correct=False)
    single = tracing.trace_prompt(
        mt64, PROMPT, SUBJECT, TARGET, traced, require_correct=False, max_batch_rows=4
    )
    assert batched.scores.keys() == single.scores.keys()
    for key in batched.scores:
        assert_equal_in_exact_arithmetic(
            batched.scores[key], single.scores[key], precision_of(mt64)
        )
    assert hook_count(mt64.model) == hooks


def test_one_restoration_matches_a_hand_written_run(mt64):
    """Restore the residual stream at (token 1, layer 0) noise sample by noise sample."""
    traced = settings(kinds=["residual"], windows=[1])
    result = tracing.trace_prompt(mt64, PROMPT, SUBJECT, TARGET, traced, require_correct=False)
    ids, (start, end) = tracing.subject_token_range(mt64.tokenizer, PROMPT, SUBJECT)
    noise = tracing.subject_noise(4, end - start, mt64.hidden_size, 0.5, traced.seed)
    block = models.resolve_layer(mt64, 0)
    embeddings = mt64.model.get_input_embeddings()
    with torch.no_grad():
        clean_hidden = mt64.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1]
        probs = []
        for sample in noise:

            def add(module, inputs, output, sample=sample):
                output = output.clone()
                output[:, start:end] += sample
                return output

            def restore(module, inputs, output):
                hidden = output[0] if isinstance(output, tuple) else output
                hidden = hidden.clone()
                hidden[:, 1] = clean_hidden[:, 1]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            handles = [embeddings.register_forward_hook(add), block.register_forward_hook(restore)]
            try:
                logits = mt64.model(torch.tensor([ids])).logits
            finally:
                for handle in handles:
                    handle.remove()
            probs.append(torch.softmax(logits[0, -1], -1)[result.target_id].item())
    assert_equal_in_exact_arithmetic(
        result.scores["residual/1"][1][0], float(np.mean(probs)), precision_of(mt64)
    )


def test_hooks_are_removed_when_the_forward_pass_raises(mt64):
    hooks_before = hook_count(mt64.model)
    ids, token_range = tracing.subject_token_range(mt64.tokenizer, PROMPT, SUBJECT)
    noise = torch.zeros(3, token_range[1] - token_range[0], mt64.hidden_size)
    with (
        pytest.raises(ValueError, match="not a multiple of 3 noise samples"),
        tracing.noised_embeddings(mt64, token_range, noise),
    ):
        mt64.model(torch.tensor([ids, ids]))
    assert hook_count(mt64.model) == hooks_before
    block = models.resolve_layer(mt64, 0)
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks.trace(mt64.model, {0: block}, retain_output=True),
    ):
        raise RuntimeError("boom")
    assert hook_count(mt64.model) == hooks_before


def test_correctness_filter_skips_facts_the_model_gets_wrong(mt64):
    # A copy that knows the fact: Lisbon's (tied) embedding points along the prompt's last state.
    mt = models.ModelAndTokenizer(copy.deepcopy(mt64.model), mt64.tokenizer, "knows-lisbon")
    ids, _ = tracing.subject_token_range(mt.tokenizer, PROMPT, SUBJECT)
    lisbon = int(mt.tokenizer(" Lisbon", add_special_tokens=False)["input_ids"][0])
    with torch.no_grad():
        last = mt.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        mt.model.get_output_embeddings().weight[lisbon] = 50 * last / last.norm()
    kept = tracing.trace_prompt(mt, PROMPT, SUBJECT, "Lisbon", settings(windows=[1]))
    runs: list[int] = []
    handle = mt.model.register_forward_pre_hook(lambda module, args: runs.append(1))
    try:
        skipped = tracing.trace_prompt(mt, PROMPT, SUBJECT, "Oslo", settings(windows=[1]))
    finally:
        handle.remove()
    assert kept.correct and set(kept.scores) == {"residual/1", "mlp/1", "attn/1"}
    # A skipped case costs its clean run alone: no corrupted run, no corrupted probability.
    assert not skipped.correct and skipped.scores == {}
    assert len(runs) == 1 and skipped.corrupted_prob is None
    with pytest.raises(errors.UsageError, match="was not traced"):
        skipped.corrupted()
    assert kept.corrupted() == kept.corrupted_prob
    # The last layer's residual stream at the last token carries the whole clean output.
    effects = kept.indirect_effects("residual", 1)
    assert_equal_in_exact_arithmetic(
        effects[-1, -1], kept.clean_prob - kept.corrupted_prob, precision_of(mt)
    )


def test_layer_windows_follow_rome():
    assert tracing.layer_window(0, 10, 4) == [0, 1, 2, 3]
    assert tracing.layer_window(5, 3, 12) == [4, 5, 6]
    assert tracing.layer_window(5, 10, 48) == list(range(0, 10))
    assert tracing.layer_window(7, 1, 8) == [7]
    with pytest.raises(errors.UsageError, match="layer 8 is out of range"):
        tracing.layer_window(8, 1, 8)


def test_bad_input_gives_clear_errors(mt64):
    with pytest.raises(errors.SampleError, match="does not occur"):
        tracing.trace_prompt(mt64, PROMPT, "Xavi Bornadel", TARGET, settings())
    result = tracing.trace_prompt(
        mt64, PROMPT, SUBJECT, TARGET, settings(windows=[1]), require_correct=False
    )
    with pytest.raises(errors.UsageError, match="out of range"):
        result.effect_at("residual", 1, layer=mt64.num_layers)
    with pytest.raises(errors.UsageError, match="not traced for mlp with window 10"):
        result.indirect_effects("mlp", 10)
    with pytest.raises(errors.UsageError, match="unknown trace kinds"):
        settings(kinds=["mlps"])


def test_token_categories_and_average():
    assert tracing.token_categories([1, 4], 8) == [4, 0, 1, 2, 3, 4, 4, 5]
    assert tracing.token_categories([0, 1], 3) == [2, 3, 5]


def test_rome_category_positions_read_rows_as_romes_notebook():
    # Tokens before the subject are in no row; the others as token_categories.
    assert tracing.rome_category_positions([1, 4], 8) == [[1], [2], [3], [4], [5, 6], [7]]
    # A one-token subject is its first and its last token; the token after the subject is
    # the first subsequent one also when it is the last.
    assert tracing.rome_category_positions([0, 1], 3) == [[0], [], [0], [1], [], [2]]
    assert tracing.rome_category_positions([0, 2], 3) == [[0], [], [1], [2], [], [2]]
    # A subject that ends the prompt (ROME's reading fails there) has no subsequent token.
    assert tracing.rome_category_positions([1, 3], 3) == [[1], [], [2], [], [], [2]]


def greedy_target(mt: models.ModelAndTokenizer, prompt: str) -> str:
    """The model's top next token after ``prompt``, as a target (it starts with a space)."""
    logits = mt.model(**mt.tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    token = mt.tokenizer.decode([int(logits.argmax())])
    assert token.startswith(" "), f"pick another prompt: the top token {token!r} has no space"
    return token.strip()


def test_results_round_trip_and_resume(mt64, tmp_path):
    prompt = "Mira Talovan works as a"
    target = greedy_target(mt64, prompt)
    traced = settings(kinds=["mlp"], windows=[1])
    cases = [(7, prompt, SUBJECT, target), (8, PROMPT, SUBJECT, "nowhere")]
    first = tracing.trace_cases(mt64, cases, traced, tmp_path)
    assert [result.correct for result in first] == [True, False]
    assert set(first[0].scores) == {"mlp/1"} and first[1].scores == {}
    for result in first:  # what is on disk reads back as what was computed
        saved = io.read_json(tmp_path / f"{result.case_id}.json", "trace result")
        assert tracing.TraceResult.from_dict(saved) == result
    stamps = [(tmp_path / f"{case_id}.json").stat().st_mtime_ns for case_id in (7, 8)]
    again = tracing.trace_cases(mt64, cases, traced, tmp_path)
    assert [(tmp_path / f"{c}.json").stat().st_mtime_ns for c in (7, 8)] == stamps
    assert again == first
    # The noise scale is a mean whose last digits follow the summation order (the thread
    # count): a scale equal to 1e-9 relative resumes; a really different one is traced again.
    rounded = dataclasses.replace(traced, noise_scale=traced.noise_scale * (1 + 1e-13))
    tracing.trace_cases(mt64, cases, rounded, tmp_path)
    assert [(tmp_path / f"{c}.json").stat().st_mtime_ns for c in (7, 8)] == stamps
    assert not traced.matches(dataclasses.replace(traced, noise_scale=traced.noise_scale * 1.01))
    # Other settings are traced again (never the saved result reused), and saved in its place.
    wider = settings(kinds=["mlp"], windows=[3])
    other = tracing.trace_cases(mt64, cases, wider, tmp_path)
    assert other[0].settings == wider and set(other[0].scores) == {"mlp/3"}
    alone = tracing.trace_prompt(mt64, prompt, SUBJECT, target, wider, case_id=7)
    assert other[0].scores == alone.scores
    saved = io.read_json(tmp_path / "7.json", "trace result")
    assert tracing.TraceResult.from_dict(saved) == other[0]


def hand_trace(
    case_id: int, subject_range: list[int], corrupted: float, scores: list[list[float]]
) -> tracing.TraceResult:
    """A traced case made by hand: ``scores`` restored probabilities, tokens by layers."""
    return tracing.TraceResult(
        case_id=case_id,
        prompt="",
        subject="",
        target="",
        tokens=[f"t{index}" for index in range(len(scores))],
        subject_range=subject_range,
        target_id=0,
        predicted_id=0,
        clean_prob=0.9 - 0.2 * (case_id - 1),
        corrupted_prob=corrupted,
        correct=case_id != 3,
        settings=settings(kinds=["mlp"], windows=[1]),
        scores={"mlp/1": scores},
    )


def test_average_trace_averages_each_case_within_a_category_then_the_cases():
    # Case 1: subject [1, 3): further, first, last subject, first subsequent, last token.
    one = hand_trace(1, [1, 3], 0.1, [[0.2, 0.3], [0.5, 0.1], [0.9, 0.7], [0.3, 0.3], [0.6, 0.4]])
    # Case 2: subject [0, 3): first, middle, last subject, first subsequent, further x2, last.
    two = hand_trace(
        2,
        [0, 3],
        0.2,
        [[0.4, 0.2], [0.6, 0.8], [1.0, 0.6], [0.2, 0.6], [0.5, 0.3], [0.9, 0.7], [0.7, 0.9]],
    )
    wrong = hand_trace(3, [0, 1], 0.0, [[1.0, 1.0], [1.0, 1.0]])  # not correct: left out
    average = tracing.average_trace([one, wrong, two], "mlp", 1)
    # Effects (restored - corrupted) per case, then the mean of the cases that have the row:
    # first (0.4, 0) & (0.2, 0); middle only case 2 (0.4, 0.6); last subject (0.8, 0.6) &
    # (0.8, 0.4); first subsequent (0.2, 0.2) & (0, 0.4); further (0.1, 0.2) & the mean of
    # (0.3, 0.1) and (0.7, 0.5), not the three tokens pooled; last token (0.5, 0.3) & (0.5, 0.7).
    expected = [[0.3, 0.0], [0.4, 0.6], [0.8, 0.5], [0.1, 0.3], [0.3, 0.25], [0.5, 0.5]]
    np.testing.assert_allclose(np.array(average.effects, dtype=float), expected, atol=1e-12)
    assert average.categories == list(tracing.TOKEN_CATEGORIES)
    assert (average.kind, average.window, average.num_cases) == ("mlp", 1, 2)
    assert average.clean_prob == pytest.approx(0.8) and average.corrupted_prob == pytest.approx(
        0.15
    )
    # A category no case has stays empty; no correct case is an error.
    assert tracing.average_trace([one], "mlp", 1).effects[1] == [None, None]
    with pytest.raises(errors.UsageError, match="no correctly answered case"):
        tracing.average_trace([wrong], "mlp", 1)
    with pytest.raises(errors.UsageError, match="unknown pooling"):
        tracing.average_trace([one], "mlp", 1, pooling="cases")


def test_token_pooling_averages_as_rome_over_the_tokens_of_all_cases():
    # One layer; restored probabilities by token. A: subject [1, 2), one token, after t0.
    a = hand_trace(1, [1, 2], 0.1, [[0.9], [0.5], [0.3], [0.2], [0.4], [0.6]])
    # B: subject [0, 2); its one subsequent token is also its last.
    b = hand_trace(2, [0, 2], 0.3, [[0.7], [0.8], [0.4]])
    # D: subject [0, 1); one further token.
    d = hand_trace(4, [0, 1], 0.2, [[0.6], [0.5], [0.8], [0.9]])
    wrong = hand_trace(3, [0, 1], 0.0, [[1.0], [1.0]])  # not correct: left out
    average = tracing.average_trace([a, wrong, b, d], "mlp", 1, pooling="token")
    # Each row: the mean of the tokens' restored probabilities over all cases, less the mean
    # corrupted probability of the cases (0.2). A's t0 precedes the subject: in no row.
    # first: A t1, B t0, D t0 -> 0.6; no middle tokens; last subject: A t1, B t1, D t0 ->
    # 1.9 / 3; first subsequent: A t2, B t2, D t1 -> 0.4; further: A t3, A t4, D t2 pooled
    # -> 1.4 / 3 (cases first would give 0.55); last: A t5, B t2, D t3 -> 1.9 / 3.
    expected = [0.4, None, 1.9 / 3 - 0.2, 0.2, 1.4 / 3 - 0.2, 1.9 / 3 - 0.2]
    assert average.effects[1] == [None]
    for row, value in zip(average.effects, expected, strict=True):
        if value is not None:
            assert row == [pytest.approx(value, abs=1e-12)]
    assert (average.pooling, average.num_cases) == ("token", 3)
    assert average.corrupted_prob == pytest.approx(0.2)
    # The default averages each case first: other rows where cases differ in length.
    by_case = tracing.average_trace([a, wrong, b, d], "mlp", 1)
    assert by_case.pooling == "case" and by_case.effects[4] != average.effects[4]


def test_romes_filter_keeps_cases_whose_top_token_is_the_whole_target(tokenizer, caplog):
    spaced, bare = (
        tokenizer(word, add_special_tokens=False)["input_ids"] for word in (" Lis", "Lis")
    )
    assert len(spaced) == len(bare) == 1
    assert len(tokenizer(" Lisbon", add_special_tokens=False)["input_ids"]) > 1

    def case(case_id: int, target: str, predicted: int, correct: bool) -> tracing.TraceResult:
        result = hand_trace(case_id, [0, 1], 0.1, [[0.5], [0.6]])
        return dataclasses.replace(result, target=target, predicted_id=predicted, correct=correct)

    one_token = case(1, "Lis", spaced[0], True)
    first_of_several = case(2, "Lisbon", spaced[0], True)  # ours traces it; ROME skips it
    unspaced = case(3, "Lis", bare[0], False)  # ROME keeps it; ours did not trace it
    wrong = case(4, "Oslo", spaced[0], False)
    results = [one_token, first_of_several, unspaced, wrong]
    assert [tracing.answered_as_rome(r, tokenizer) for r in results] == [True, False, True, False]
    with caplog.at_level(logging.WARNING, logger="remedi.tracing"):
        assert tracing.rome_cases(results, tokenizer) == [one_token]
    assert "1 cases that ROME's filter keeps were not traced" in caplog.text


def test_tracing_a_llama_with_bos_restores_attention_and_mlp(llama_tokenizer):
    model = tiny_llama(llama_tokenizer, initializer_range=0.2).double().requires_grad_(False)
    mt = models.ModelAndTokenizer(copy.deepcopy(model), llama_tokenizer, "tiny-llama")
    hooks = hook_count(mt.model)
    result = tracing.trace_prompt(
        mt, PROMPT, SUBJECT, TARGET, settings(windows=[1]), require_correct=False
    )
    assert mt.tokenizer.decode([mt.tokenizer.bos_token_id]) == result.tokens[0]
    assert result.subject_range[0] >= 1  # BOS is not part of the subject
    for kind in tracing.KINDS:
        effects = result.indirect_effects(kind, 1)
        assert effects.shape == (len(result.tokens), mt.num_layers)
        assert np.all(effects[: result.subject_range[0]] == 0)  # before the noise: no effect
    assert hook_count(mt.model) == hooks


# ---------------------------------------------------------------------------------------------
# Restored runs after the corrupted run's cached prefix equal runs of the whole prompt.

LATE_PROMPT = "They said that Mira Talovan lives in the city of"
"""The subject in the middle: restorations before, inside and after it."""


def family_mt(model_type: str, tokenizer) -> models.ModelAndTokenizer:
    model = tiny_model(model_type, vocab_size=len(tokenizer), initializer_range=0.2)
    return models.ModelAndTokenizer(model.double().requires_grad_(False), tokenizer, model_type)


def assert_same_scores(reused: tracing.TraceResult, plain: tracing.TraceResult, precision) -> None:
    assert reused.scores.keys() == plain.scores.keys()
    assert_equal_in_exact_arithmetic(reused.corrupted_prob, plain.corrupted_prob, precision)
    for key in plain.scores:
        assert_equal_in_exact_arithmetic(reused.scores[key], plain.scores[key], precision)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_prefix_reuse_gives_the_scores_of_whole_prompt_runs(model_type, tokenizer):
    mt = family_mt(model_type, tokenizer)
    hooks = hook_count(mt.model)
    traced = settings(windows=[1, 3])
    reused = tracing.trace_prompt(mt, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False)
    plain = tracing.trace_prompt(
        mt, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False, reuse_prefix=False
    )
    assert reused.subject_range[0] >= 2  # tokens before the subject
    assert_same_scores(reused, plain, precision_of(mt))
    # Restorations move p(target) by far more than the tolerance: else the test were too weak.
    scores = np.asarray(plain.scores["residual/1"])
    assert np.ptp(scores[plain.subject_range[0] :]) > 0.05 * scores.max()
    assert hook_count(mt.model) == hooks


def test_prefix_reuse_gives_every_kind_and_window_of_whole_prompt_runs(tokenizer):
    model = tiny_gpt2(tokenizer, initializer_range=0.2, n_layer=5)
    mt = models.ModelAndTokenizer(model.double().requires_grad_(False), tokenizer, "gpt2-5")
    traced = settings(windows=list(tracing.DEFAULT_WINDOWS))
    reused = tracing.trace_prompt(mt, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False)
    plain = tracing.trace_prompt(
        mt, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False, reuse_prefix=False
    )
    assert set(reused.scores) == {
        tracing.score_key(kind, window) for kind in tracing.KINDS for window in (10, 5, 3, 1)
    }
    assert_same_scores(reused, plain, precision_of(mt))
    # Small passes: the configurations of one token split over several.
    one = settings(kinds=["mlp"], windows=[3])
    chunked = tracing.trace_prompt(
        mt, LATE_PROMPT, SUBJECT, TARGET, one, require_correct=False, max_batch_rows=8
    )
    assert_equal_in_exact_arithmetic(
        chunked.scores["mlp/3"], plain.scores["mlp/3"], precision_of(mt)
    )


def test_prefix_reuse_restores_any_mask_in_its_order(llama_tokenizer):
    """Restorations that start at different tokens (several tokens, none) come back in order."""
    mt = models.ModelAndTokenizer(
        tiny_llama(llama_tokenizer, initializer_range=0.2).double().requires_grad_(False),
        llama_tokenizer,
        "tiny-llama",
    )
    ids, token_range = tracing.subject_token_range(mt.tokenizer, LATE_PROMPT, SUBJECT)
    input_ids = torch.tensor([ids])
    _, states = tracing.clean_states(mt, input_ids, ["mlp"])
    noise = tracing.subject_noise(3, token_range[1] - token_range[0], mt.hidden_size, 2.0, 0)
    masks = torch.zeros(5, mt.num_layers, len(ids), dtype=torch.bool)
    masks[0, 1, [token_range[1] - 1, len(ids) - 1]] = True  # two tokens, one layer
    masks[2, :, [0, token_range[0]]] = True  # from the first token (nothing cached), every layer
    masks[3, 0, token_range[0] + 1 :] = True  # inside the subject onwards
    masks[4, 2, len(ids) - 1] = True  # only the last token
    arguments = (mt, input_ids, 7, token_range, noise, "mlp", masks, states)
    reused = tracing.restored_probs(*arguments, max_batch_rows=6)
    plain = tracing.restored_probs(*arguments, reuse_prefix=False)
    assert_equal_in_exact_arithmetic(reused, plain, precision_of(mt))
    assert len(set(plain.tolist())) == 5  # every configuration differs

    # Restoring only tokens before the subject puts back what the corrupted run has there: with
    # prefix reuse it is the corrupted run itself (exactly), without it equal up to rounding.
    assert token_range[0] >= 2, "the prompt must have tokens before its subject"
    before = torch.zeros(3, mt.num_layers, len(ids), dtype=torch.bool)
    before[1, :, : token_range[0]] = True  # every layer, every token before the subject
    before[2, 1, token_range[0] - 1] = True  # one state just before it
    arguments = (mt, input_ids, 7, token_range, noise, "mlp", before, states)
    lengths: list[int] = []

    def record_length(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        lengths.append(kwargs["input_ids"].shape[1])

    handle = mt.model.register_forward_pre_hook(record_length, with_kwargs=True)
    try:
        reused = tracing.restored_probs(*arguments)
    finally:
        handle.remove()
    # One corrupted run of the whole prompt for the cache; then only the last token is run.
    assert lengths == [len(ids), 1]
    plain = tracing.restored_probs(*arguments, reuse_prefix=False)
    assert reused[1] == reused[0] and reused[2] == reused[0]  # row 0 restores nothing
    assert_equal_in_exact_arithmetic(reused, plain, precision_of(mt))


class GPT2WithoutCache(transformers.GPT2LMHeadModel):
    """A causal LM whose forward takes no key/value cache."""

    def forward(self, input_ids=None, use_cache=None, logits_to_keep=0, **kwargs):  # type: ignore[override]
        return super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep)


class GPT2IgnoringCache(transformers.GPT2LMHeadModel):
    """A causal LM whose forward takes a key/value cache but leaves it empty."""

    def forward(self, input_ids=None, cache=None, use_cache=None, logits_to_keep=0, **kwargs):  # type: ignore[override]
        return super().forward(input_ids=input_ids, logits_to_keep=logits_to_keep)


@pytest.mark.parametrize(
    ("model_class", "reason"),
    [
        (GPT2WithoutCache, "forward takes no key/value cache"),
        (GPT2IgnoringCache, "corrupted run cached 0 of"),
    ],
)
def test_a_model_without_a_cache_is_traced_on_whole_prompt_runs(model_class, reason, mt64, caplog):
    model = model_class(mt64.model.config).double().eval().requires_grad_(False)
    model.load_state_dict(mt64.model.state_dict())
    mt = models.ModelAndTokenizer(model, mt64.tokenizer, model_class.__name__)
    traced = settings(kinds=["mlp"], windows=[1])
    with caplog.at_level(logging.WARNING, logger="remedi.tracing"):
        fallen_back = tracing.trace_prompt(
            mt, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False
        )
    assert reason in caplog.text and "runs of the whole prompt" in caplog.text
    plain = tracing.trace_prompt(
        mt64, LATE_PROMPT, SUBJECT, TARGET, traced, require_correct=False, reuse_prefix=False
    )
    assert_same_scores(fallen_back, plain, precision_of(mt))
