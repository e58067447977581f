"""The five editing problems: success metrics, the objectives' hooks, R^2, and real edits with FT
on a tiny GPT-2 (weights restored bit-identically)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from remedi import errors, evaluation, io, models, tracing
from remedi.evaluation.locate import (
    analysis,
    objectives,
    problems,
    protocols,
    running,
    setups,
    target_trace,
)
from remedi.methods import ft, memit, registry
from scripts import edit_problems
from tests.conftest import weighty_gpt2

PROMPT = "Mira Talovan lives in the city of"
SUBJECT = "Mira Talovan"


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_success_metrics_on_hand_made_cases():
    assert problems.rewrite_score(0.2, 0.6) == pytest.approx(0.5)
    assert problems.rewrite_score(0.2, 1.0) == pytest.approx(1.0)
    assert problems.erasure_score(0.8, 0.2) == pytest.approx(0.75)
    assert problems.erasure_score(0.8, 0.0) == pytest.approx(1.0)
    # Bounded below by 0, as the reference's recovered_prop and erased_prop.
    assert problems.rewrite_score(0.2, 0.1) == 0.0
    assert problems.erasure_score(0.2, 0.3) == 0.0
    assert problems.success("fact_erasure", 0.8, 0.2) == pytest.approx(0.75)
    for problem in ("error_injection", "tracing_reversal", "fact_amplification", "fact_forcing"):
        assert problems.success(problem, 0.2, 0.6) == pytest.approx(0.5)


def test_swapped_distribution_is_the_unlikelihood_of_the_token():
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0]], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    swapped = objectives.swapped_log_probs(logits, 3).exp()[0].double()
    assert float(swapped.sum()) == pytest.approx(1.0, abs=1e-6)  # float32 inside
    assert float(swapped[3]) == pytest.approx(1 - float(probs[3]), rel=1e-5)
    scale = float(probs[3] / (1 - probs[3]))
    np.testing.assert_allclose(swapped[:3].numpy(), (probs[:3] * scale).numpy(), rtol=1e-5)


def test_noised_subject_noises_every_mention_and_only_while_active(mt):
    text = f"{SUBJECT} is here. {PROMPT}"
    ids = torch.tensor([mt.tokenizer(text)["input_ids"]])
    variants = objectives._subject_variants(mt, PROMPT, SUBJECT)
    mask = objectives.subject_mask(ids, variants)[0]
    expected = torch.zeros_like(mask)
    for start in (text.find(SUBJECT), text.rfind(SUBJECT)):
        one = tracing.subject_token_range(mt.tokenizer, text[: start + len(SUBJECT)], SUBJECT)[1]
        expected[one[0] : one[1]] = True
    assert torch.equal(mask, expected) and int(mask.sum()) >= 2

    embeddings = mt.model.get_input_embeddings()
    clean = embeddings(ids)
    hooks = hook_count(mt.model)
    with objectives.noised_subject(mt, PROMPT, SUBJECT, 1.0, seed=0) as switch:
        noised = embeddings(ids)
        switch.active = False
        off = embeddings(ids)
    changed = (noised - clean).abs().sum(-1)[0] > 0
    assert torch.equal(changed, expected)
    assert torch.equal(off, clean)
    assert hook_count(mt.model) == hooks


def test_forcing_is_judged_under_the_first_draw_the_edit_ran_under(mt):
    # The reference re-seeds one generator for the edit and for judging: the judged draw is
    # the first the edit saw. Ours: noised_subject's first draw is forcing_noise.
    settings = tracing.TraceSettings(noise_scale=0.7, num_samples=3, kinds=["mlp"], windows=[1])
    ids, token_range = tracing.subject_token_range(mt.tokenizer, PROMPT, SUBJECT)
    input_ids = torch.tensor([ids])
    embeddings = mt.model.get_input_embeddings()
    with objectives.noised_subject(mt, PROMPT, SUBJECT, settings.noise_scale, settings.seed):
        first = embeddings(input_ids)
        second = embeddings(input_ids)  # fresh noise on every pass
    noise = objectives.forcing_noise(mt, token_range, settings)
    assert noise.shape[0] == objectives.FORCING_NOISE_SAMPLES == 1
    with tracing.noised_embeddings(mt, token_range, noise):
        judged = embeddings(input_ids)
    assert torch.equal(first, judged)
    assert not torch.equal(second, judged)


def test_tracing_effect_is_the_max_fraction_restored_from_the_subject_on():
    settings = tracing.TraceSettings(noise_scale=1.0, num_samples=1, kinds=["mlp"], windows=[5])
    restored = [[0.9, 0.1], [0.2, 0.35], [0.3, 0.6], [0.4, 0.25]]  # (tokens, layers)
    trace = tracing.TraceResult(
        case_id=0,
        prompt="",
        subject="",
        target="",
        tokens=["a", "b", "c", "d"],
        subject_range=[1, 3],
        target_id=0,
        predicted_id=0,
        clean_prob=0.5,
        corrupted_prob=0.3,
        correct=True,
        settings=settings,
        scores={"mlp/5": restored},
    )
    # Layer 0: token 0 (0.9) is before the subject; from token 1 on the best is 0.4 -> 0.5.
    assert problems.tracing_effect(trace, "mlp", 5, 0) == pytest.approx(0.5)
    assert problems.tracing_effect(trace, "mlp", 5, 1) == pytest.approx(1.5)
    trace.scores["mlp/5"] = [[0.1, 0.1]] * 4  # every restoration below corrupted: 0
    assert problems.tracing_effect(trace, "mlp", 5, 0) == 0.0


def test_r_squared_matches_numpy_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = x @ np.array([1.5, -0.5]) + rng.normal(scale=0.5, size=40)
    design = np.column_stack([np.ones(40), x])
    _, residuals, *_ = np.linalg.lstsq(design, y, rcond=None)
    expected = 1 - residuals[0] / ((y - y.mean()) ** 2).sum()
    assert analysis.r_squared(y, x) == pytest.approx(expected, rel=1e-10)
    # One feature: R^2 is the squared correlation.
    r = np.corrcoef(x[:, 0], y)[0, 1]
    assert analysis.r_squared(y, x[:, :1]) == pytest.approx(r**2, rel=1e-10)


def result(problem: str, layer: int, effect: float, value: float) -> problems.ProblemResult:
    return problems.ProblemResult(
        0, problem, "ft", layer, [layer], "x", 0.0, value, value, effect, effect
    )


def test_regressions_find_the_layer_when_success_depends_only_on_it():
    rng = np.random.default_rng(1)
    results = [
        result("error_injection", layer, float(rng.normal()), [0.9, 0.5, 0.1][layer])
        for layer in (0, 1, 2)
        for _ in range(10)
    ]
    regression = analysis.regress(results)
    assert regression.layer == pytest.approx(1.0)
    assert regression.both >= regression.layer - 1e-12
    assert regression.both == pytest.approx(1.0)
    assert regression.tracing < 0.3
    r2, by_layer = analysis.analyze(results)
    assert r2.rows[0].values["layer"] == pytest.approx(1.0)
    assert by_layer.rows[0].values == pytest.approx({"0": 0.9, "1": 0.5, "2": 0.1})
    # The tracing effect helps in opposite directions at two layers: only the reference's
    # interaction (score ~ factor(layer) * tracing) fits that exactly.
    effects = rng.uniform(size=20)
    crossed = [
        result("fact_forcing", layer, float(e), float(e if layer == 0 else 1 - e))
        for layer in (0, 1)
        for e in effects[layer * 10 : layer * 10 + 10]
    ]
    crossed_regression = analysis.regress(crossed)
    assert crossed_regression.both == pytest.approx(1.0)
    assert crossed_regression.tracing < 0.5 and crossed_regression.layer < 0.5
    with pytest.raises(errors.UsageError, match="one problem at a time"):
        analysis.regress([*results, result("fact_erasure", 0, 0.0, 0.0)])


def test_hparams_move_to_the_edit_layer():
    assert registry.moved_to_layer("rome", {"layer": 0, "v_lr": 0.5}, 3, 4) == {
        "layer": 3,
        "v_lr": 0.5,
    }
    assert registry.moved_to_layer("ft", {"layers": [0]}, 2, 4)["layers"] == [2]
    assert registry.moved_to_layer("ft5", {"layers": [0, 1, 2, 3]}, 5, 12)["layers"] == [
        3,
        4,
        5,
        6,
        7,
    ]
    with pytest.raises(errors.UsageError, match="out of range"):
        registry.moved_to_layer("rome", {"layer": 0}, 4, 4)
    with pytest.raises(errors.UsageError, match="out of range"):
        registry.moved_to_layer("ft", {"layers": [0]}, -1, 4)


def test_a_method_is_moved_to_a_layer_in_memory(mt):
    # The packaged toy hyperparameters (ft: layer 0), moved to layer 1 without writing a file.
    toy = models.ModelAndTokenizer(mt.model, mt.tokenizer, "toy-tiny")
    resources = evaluation.EvalResources()
    method, edited = running.method_at_layer("ft", toy, [case()], resources, 1)
    assert edited == [1]
    assert isinstance(method, evaluation.WeightEditMethod)
    assert isinstance(method.editor, ft.FtEditor) and method.editor.hparams.layers == [1]
    packaged = registry.load_hparams("ft", "toy")
    assert method.editor.hparams == ft.FtHparams(**{**packaged.to_dict(), "layers": [1]})


def case() -> evaluation.EvalCase:
    return evaluation.EvalCase(
        case_id=3,
        entity=SUBJECT,
        relation_id="P551",
        prompt=PROMPT,
        context=f"{PROMPT} Oslo",
        attribute="Oslo",
        target_new="Oslo",
        target_new_id="Q585",
        target_true="Lisbon",
        target_true_id="Q597",
        rewrite_prompt=PROMPT,
    )


def test_every_problem_edits_and_restores_the_weights(mt):
    settings = tracing.TraceSettings(
        noise_scale=0.5, num_samples=3, kinds=["residual"], windows=[1]
    )
    setup = setups.setup_case(mt, case(), settings, require_correct=False)
    assert setup.target_noised and setup.p_true > 0 and setup.p_true_noised > 0
    before = {name: p.detach().clone() for name, p in mt.model.named_parameters()}
    hooks = hook_count(mt.model)
    # No early stop: the tiny random model gives the true target little probability to erase.
    hparams = ft.FtHparams(
        layers=[0], num_steps=15, lr=1e-2, norm_constraint=None, early_stop_loss=0.0
    )
    outcomes = {}
    for problem in problems.PROBLEMS:
        method = evaluation.WeightEditMethod(ft.FtEditor("ft", hparams))
        outcomes[problem] = problems.edit_case(
            mt, method, problem, case(), setup, settings, 0, [0], "residual", 1
        )
        for name, parameter in mt.model.named_parameters():
            assert torch.equal(parameter, before[name]), (problem, name)
        assert hook_count(mt.model) == hooks
    # Each problem's target and starting probability, as its definition names them.
    starts = {
        "error_injection": ("Oslo", setup.p_new),
        "tracing_reversal": (setup.target_noised, setup.p_noised_target),
        "fact_erasure": (setup.target_true_first, setup.p_true),
        "fact_amplification": ("Lisbon", setup.p_true),
        "fact_forcing": ("Lisbon", setup.p_true_noised),
    }
    assert {name: (o.target, o.pre) for name, o in outcomes.items()} == starts
    assert outcomes["error_injection"].post > outcomes["error_injection"].pre
    assert outcomes["fact_amplification"].post > setup.p_true
    assert outcomes["fact_erasure"].post < setup.p_true
    assert outcomes["fact_forcing"].post > outcomes["fact_forcing"].pre
    for name, outcome in outcomes.items():
        pre, post = outcome.pre, outcome.post
        expected = (pre - post) / pre if name == "fact_erasure" else (post - pre) / (1 - pre)
        assert outcome.success == pytest.approx(max(0.0, expected), rel=1e-12), name
    # The tracing numbers at the edited layer 0, from the raw restored probabilities (which
    # differ between the subject's first and last token, and from layer 1's): the subject's last
    # token minus the corrupted run; the largest fraction restored from the subject's first
    # token on.
    restored = np.array(setup.trace.scores["residual/1"])
    corrupted, clean = setup.trace.corrupted_prob, setup.trace.clean_prob
    start, end = setup.trace.subject_range
    assert restored[start, 0] != pytest.approx(restored[end - 1, 0], rel=1e-3)
    assert restored[start:, 0].max() != pytest.approx(restored[start:, 1].max(), rel=1e-3)
    fraction = max(0.0, *((restored[start:, 0] - corrupted) / abs(corrupted - clean)))
    for outcome in outcomes.values():
        assert outcome.last_subject_effect == pytest.approx(restored[end - 1, 0] - corrupted)
        assert outcome.tracing_effect == pytest.approx(fraction, rel=1e-12)


def test_problems_refuse_bad_input(mt, tmp_path):
    settings = tracing.TraceSettings(
        noise_scale=0.5, num_samples=2, kinds=["residual"], windows=[1]
    )
    missing = evaluation.EvalCase(**{**case().to_dict(), "rewrite_prompt": "Somebody lives in"})
    with pytest.raises(errors.SampleError, match="does not occur"):
        setups.setup_case(mt, missing, settings)
    resources = evaluation.EvalResources()
    with pytest.raises(errors.UsageError, match="layer 9 is out of range"):
        running.run_problems(mt, "ft", [case()], resources, settings, tmp_path, [9])
    with pytest.raises(errors.UsageError, match="unknown editing problems"):
        running.run_problems(mt, "ft", [case()], resources, settings, tmp_path, [0], ["erase"])
    with pytest.raises(errors.UsageError, match="does not edit weights"):
        problems.edit_case(
            mt,
            evaluation.Method(),
            "fact_erasure",
            case(),
            None,
            settings,
            0,
            [0],  # type: ignore[arg-type]
        )


def test_a_case_that_cannot_be_set_up_is_skipped_not_fatal(mt, tmp_path, caplog):
    settings = tracing.TraceSettings(
        noise_scale=0.5, num_samples=2, kinds=["residual"], windows=[1]
    )
    missing = evaluation.EvalCase(**{**case().to_dict(), "rewrite_prompt": "Somebody lives in"})
    resources = evaluation.EvalResources()
    assert running.run_problems(mt, "ft", [missing], resources, settings, tmp_path, [0]) == []
    assert "skips case" in caplog.text and "does not occur" in caplog.text


def test_edit_layers_are_all_one_or_a_list_checked_against_the_model():
    assert edit_problems.edit_layers("all", 3) == [0, 1, 2]
    assert edit_problems.edit_layers("2", 3) == [2]
    assert edit_problems.edit_layers("2,0, 2", 3) == [2, 0]  # in the order given
    with pytest.raises(errors.UsageError, match="layer 3 is out of range"):
        edit_problems.edit_layers("0,3", 3)
    with pytest.raises(errors.UsageError, match="comma-separated"):
        edit_problems.edit_layers("first", 3)
    with pytest.raises(errors.UsageError, match="names no layer"):
        edit_problems.edit_layers(",", 3)


def test_memit_runs_the_problems_and_restores_the_weights(mt):
    settings = tracing.TraceSettings(noise_scale=0.5, num_samples=2, kinds=["mlp"], windows=[1])
    setup = setups.setup_case(mt, case(), settings, require_correct=False)
    # C = I (no statistics): the problems' machinery is what is checked here, not MEMIT's maths.
    # On this random model the edit moves p(target) by 5-80%, but in a direction that depends on
    # the CPU's kernels (measured under ATEN_CPU_CAPABILITY=avx512, avx2 and default), so only
    # that the edit reached the measurement is asserted. With the default
    # mom2_update_weight (15000) against C = I the edit moved it by 3e-6 relative: by nothing.
    hparams = memit.MemitHparams(
        layers=[0, 1],
        v_num_grad_steps=10,
        clamp_norm_factor=4.0,
        mom2_update_weight=1.0,
        mom2_adjustment=False,
        context_template_lengths=[],
    )
    before = {name: p.detach().clone() for name, p in mt.model.named_parameters()}
    hooks = hook_count(mt.model)
    for problem in ("error_injection", "fact_forcing"):
        method = evaluation.WeightEditMethod(memit.MemitEditor(mt, hparams, {}))
        outcome = problems.edit_case(
            mt, method, problem, case(), setup, settings, 1, [0, 1], "mlp", 1
        )
        assert abs(outcome.post - outcome.pre) > 0.02 * outcome.pre, problem
        for name, parameter in mt.model.named_parameters():
            assert torch.equal(parameter, before[name]), (problem, name)
        assert hook_count(mt.model) == hooks


# ---------------------------------------------------------------------------------------------
# The reference protocol (google/belief-localization): filter, whole-target tracing effect,
# per-problem hyperparameters, R^2 per (method, window).

KNOWN_PROMPT = "Xavi Bornadel speaks"
"""On the tiny GPT-2, greedy decoding continues this with " as" (p about 0.024)."""


def tempered(mt: models.ModelAndTokenizer, alpha: float) -> models.ModelAndTokenizer:
    """A copy of ``mt`` whose logits are ``alpha`` times the original (the final layer norm's
    weight and bias scaled): the same greedy generation, other probabilities."""
    model = copy.deepcopy(mt.model)
    model.transformer.ln_f.weight.mul_(alpha)
    model.transformer.ln_f.bias.mul_(alpha)
    return models.ModelAndTokenizer(model, mt.tokenizer, "toy-tiny")


def tempered_to(mt: models.ModelAndTokenizer, prob: float) -> models.ModelAndTokenizer:
    """:func:`tempered` with ``p(" as" | KNOWN_PROMPT)`` equal to ``prob`` (bisection)."""
    low, high = 0.05, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if target_trace.reference_target_prob(tempered(mt, middle), KNOWN_PROMPT, "as") < prob:
            low = middle
        else:
            high = middle
    return tempered(mt, high)


def known_case(case_id: int = 7, target: str = "as") -> evaluation.EvalCase:
    return evaluation.EvalCase(
        case_id=case_id,
        entity="Xavi Bornadel",
        relation_id="P1412",
        prompt=KNOWN_PROMPT,
        context=f"{KNOWN_PROMPT} Oslo",
        attribute="Oslo",
        target_new="Oslo",
        target_new_id="Q585",
        target_true=target,
        target_true_id="Q1",
        rewrite_prompt=KNOWN_PROMPT,
    )


def test_reference_filter_keeps_a_generated_fact_just_above_p_002_and_drops_one_below(mt):
    settings = tracing.TraceSettings(noise_scale=0.5, num_samples=2, kinds=["mlp"], windows=[5])
    full = target_trace.greedy_continuation(mt, KNOWN_PROMPT, 36)
    assert full.startswith("as") and len(full) > 10
    # Generation stops once the target is in it: the verdict cannot change after.
    assert target_trace.greedy_continuation(mt, KNOWN_PROMPT, 36, until="as") == "as"
    verdicts, kept = {}, {}
    for prob in (0.0205, 0.0195):
        model = tempered_to(mt, prob)
        assert target_trace.greedy_continuation(model, KNOWN_PROMPT, 36) == full
        kept[prob] = setups.setup_case(model, known_case(), settings, protocol="reference")
        assert kept[prob].filter_prob == pytest.approx(prob, rel=1e-4)
        verdicts[prob] = setups.knows(kept[prob])
    # Kept just above 0.02 (ours needs the top-1 token and p > 0.1: it dropped both).
    assert verdicts == {0.0205: True, 0.0195: False}
    assert kept[0.0205].generation == "as" and kept[0.0195].generation is None
    # Likely enough, but not in the generation: dropped.
    assert "spanish" not in full.lower()
    other = dataclasses.replace(kept[0.0205], target_true="Spanish", generation=full)
    assert not setups.knows(other) and setups.knows(dataclasses.replace(other, target_true="AS"))


def test_reference_p_is_the_product_of_teacher_forced_probabilities_of_the_spaced_target(mt):
    ids = mt.tokenizer(PROMPT)["input_ids"]
    target = mt.tokenizer(" Lisbon and works", add_special_tokens=False)["input_ids"]
    assert len(target) >= 3
    with torch.no_grad():
        probs = mt.model(torch.tensor([ids + target])).logits[0].double().softmax(-1)
    expected = 1.0
    for offset, token in enumerate(target):
        expected *= float(probs[len(ids) - 1 + offset, token])
    prob = target_trace.reference_target_prob(mt, PROMPT, "Lisbon and works")
    assert prob == pytest.approx(expected, rel=1e-5)


def test_whole_target_trace_is_the_teacher_forced_product_clean_noised_and_restored(mt):
    settings = tracing.TraceSettings(noise_scale=0.7, num_samples=3, kinds=["mlp"], windows=[1])
    target = "Lisbon and works"
    trace = target_trace.trace_target(mt, PROMPT, SUBJECT, target, settings, "mlp", 1, [1, 0])
    ids, (start, end) = tracing.subject_token_range(mt.tokenizer, PROMPT, SUBJECT)
    target_ids = mt.tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + target_ids])
    noise = tracing.subject_noise(3, end - start, mt.hidden_size, 0.7, settings.seed)

    def product(logits: torch.Tensor) -> torch.Tensor:  # (rows, seq, vocab) -> (rows,)
        log_probs = logits.double().log_softmax(-1)[:, len(ids) - 1 : -1]
        labels = torch.tensor(target_ids).expand(logits.shape[0], -1)
        return log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1).exp()

    mlp = mt.model.transformer.h[1].mlp
    kept = {}
    with torch.no_grad():
        handle = mlp.register_forward_hook(lambda m, i, o: kept.setdefault("clean", o.clone()))
        clean_logits = mt.model(full).logits
        handle.remove()
        embeds = mt.model.transformer.wte(full).expand(3, -1, -1).clone()
        embeds[:, start:end] += noise.float()
        corrupted = product(mt.model(inputs_embeds=embeds).logits).mean()

        at: dict[str, int] = {}

        def restore(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, at["token"]] = kept["clean"][0, at["token"]]
            return output

        restored = []
        handle = mlp.register_forward_hook(restore)
        for token in range(start, len(ids)):
            at["token"] = token
            restored.append(float(product(mt.model(inputs_embeds=embeds).logits).mean()))
        handle.remove()
    clean = float(product(clean_logits)[0])
    first_token = float(clean_logits[0, len(ids) - 1].double().softmax(-1)[target_ids[0]])
    # The whole target, teacher forced (ours traced the first token alone).
    assert trace.clean_prob == pytest.approx(clean, rel=1e-5)
    assert trace.clean_prob < 0.5 * first_token
    assert trace.corrupted_prob == pytest.approx(float(corrupted), rel=1e-5)
    np.testing.assert_allclose(trace.restored_at(1), restored, rtol=1e-5)
    assert sorted(trace.restored) == ["0", "1"]
    fraction = max(0.0, *((np.array(restored) - float(corrupted)) / abs(float(corrupted) - clean)))
    assert trace.fraction_restored(1) == pytest.approx(fraction, rel=1e-5)
    assert trace.last_subject_effect(1) == pytest.approx(restored[end - 1 - start] - corrupted)
    # Extending to another layer keeps the traced ones as they were.
    again = target_trace.trace_target(
        mt, PROMPT, SUBJECT, target, settings, "mlp", 1, [1], previous=trace
    )
    assert again.restored_at(1).tolist() == trace.restored_at(1).tolist()


def test_per_problem_hyperparameters_reach_the_edit(mt):
    toy = models.ModelAndTokenizer(mt.model, mt.tokenizer, "toy-tiny")
    resources = evaluation.EvalResources()
    before = {name: p.detach().clone() for name, p in toy.model.named_parameters()}
    bounds = {}
    for problem in problems.PROBLEMS:
        overrides = protocols.PROBLEM_HPARAMS["ft"][problem]
        method, _ = running.method_at_layer("ft", toy, [case()], resources, 0, overrides=overrides)
        assert isinstance(method, evaluation.WeightEditMethod)
        hparams = method.editor.hparams
        assert hparams.num_steps == (50 if problem == "fact_forcing" else 25)
        new = method.new_weights(toy, case())
        change = max(float((new[name] - before[name]).abs().max()) for name in new)
        # The packaged step (lr 1e-3) overshoots every bound: the clamp sets the change (up to
        # float32 rounding of weights near 0.2).
        assert change == pytest.approx(overrides["norm_constraint"], rel=0.01), problem
        bounds[problem] = change
    assert bounds["fact_erasure"] < bounds["fact_amplification"] < bounds["error_injection"]
    assert bounds["error_injection"] < bounds["tracing_reversal"]
    with pytest.raises(errors.UsageError, match="not ft hyperparameters"):
        running.method_at_layer("ft", toy, [case()], resources, 0, overrides={"v_lr": 0.05})
    # MEMIT edits the reference's window of 5 around the central layer (clipped).
    moved = registry.moved_to_layer("memit", {"layers": [0]}, 1, 2)
    assert moved["layers"] == [1]
    assert tracing.layer_window(1, protocols.EDIT_WINDOWS["memit"], 8) == [0, 1, 2, 3]


def test_reference_run_records_its_protocol_and_refuses_another(mt, tmp_path):
    model = tempered_to(mt, 0.0205)
    settings = tracing.TraceSettings(noise_scale=0.5, num_samples=2)
    resources = evaluation.EvalResources()
    chosen = ["fact_erasure", "tracing_reversal"]
    results = running.run_problems(
        model, "ft", [known_case()], resources, settings, tmp_path, [0, 1], chosen
    )
    assert {(r.problem, r.layer) for r in results} == {
        (p, layer) for p in chosen for layer in (0, 1)
    }
    for outcome in results:
        assert outcome.protocol == "reference" and outcome.window == 1
        assert outcome.hparams == protocols.PROBLEM_HPARAMS["ft"][outcome.problem]
    saved = setups.ProblemSetup.from_dict(io.read_json(tmp_path / "setups" / "7.json", "setup"))
    assert saved.target_trace is not None and sorted(saved.target_trace.restored) == ["0", "1"]
    for outcome in results:
        assert outcome.tracing_effect == saved.target_trace.fraction_restored(outcome.layer)
    protocol = protocols.Protocol.from_dict(io.read_json(tmp_path / "protocol.json", "protocol"))
    assert protocol.name == "reference" and protocol.min_true_prob == 0.02
    assert protocol.problem_hparams["fact_erasure"] == {"norm_constraint": 1e-5}
    with pytest.raises(
        errors.UsageError, match=r"differs from this run.s .* in name, min_true_prob"
    ):
        running.run_problems(
            model, "ft", [known_case()], resources, settings, tmp_path, [0], chosen, protocol="ours"
        )
    # Under ours the same fact is unknown (p < 0.1): nothing is edited.
    assert (
        running.run_problems(
            model,
            "ft",
            [known_case()],
            resources,
            settings,
            tmp_path / "ours",
            [0],
            chosen,
            protocol="ours",
        )
        == []
    )


def grouped_result(
    method: str, window: int, layer: int, effect: float, value: float
) -> problems.ProblemResult:
    return problems.ProblemResult(
        0,
        "error_injection",
        method,
        layer,
        [layer],
        "x",
        0.0,
        value,
        value,
        effect,
        effect,
        window=window,
    )


def test_r_squared_is_per_method_and_window_as_a_hand_computation():
    rng = np.random.default_rng(2)
    results = []
    for method, window, slope in (("ft", 1, 1.0), ("ft5", 5, -1.0), ("memit", 5, 0.0)):
        for layer in (0, 1):
            for _ in range(8):
                effect = float(rng.uniform())
                noise = float(rng.normal(scale=0.2))
                results.append(
                    grouped_result(method, window, layer, effect, slope * effect + noise)
                )
    groups = analysis.by_method_and_window(results)
    assert sorted(groups) == [("ft", 1), ("ft5", 5), ("memit", 5)]
    for (method, window), members in groups.items():
        regression = analysis.regress(members)
        assert (regression.method, regression.window) == (method, window)
        y = np.array([m.success for m in members])
        x = np.array([m.tracing_effect for m in members])
        # One regressor: R^2 is the squared correlation; the layer alone: the between-layer
        # share of the variance (two levels).
        assert regression.tracing == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-9)
        layer_of = np.array([m.layer for m in members])
        fitted = np.where(layer_of == 0, y[layer_of == 0].mean(), y[layer_of == 1].mean())
        share = 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()
        assert regression.layer == pytest.approx(share, rel=1e-9)
    assert analysis.regress(groups[("ft", 1)]).tracing > 0.5
    # Pooling the opposite slopes hides them: only on request.
    with pytest.raises(errors.UsageError, match="one \\(method, window\\) at a time"):
        analysis.regress(results)
    with pytest.raises(errors.UsageError, match="several \\(method, window\\) groups"):
        analysis.analyze(results)
    assert analysis.regress(results, pooled=True).tracing < 0.2
