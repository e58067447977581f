"""Precision: each experiment loads its LM in its reference's dtype, an explicit ``--dtype`` wins,
and a weight edit in half precision raises on overflow and warns when rounding loses the update."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging

import pytest
import torch
import transformers

from remedi import models, settings
from remedi.methods import common, memit, rome
from scripts import eval_fact_gen, harm_run
from tests.conftest import save_tiny_gpt2, weighty_gpt2

GPT2_XL = transformers.GPT2Config(n_embd=1600, n_layer=48, n_head=25)
GPTJ = transformers.GPTJConfig()  # GPT-J-6B's sizes
NEOX_20B = transformers.GPTNeoXConfig()  # GPT-NeoX-20B's sizes
GPT2 = transformers.GPT2Config()
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # default_dtype reads only device.type

F32, F16 = torch.float32, torch.float16
# What each reference loads on a GPU (file and line in remedi.settings.PRECISION).
REFERENCE_DTYPES = {
    # REMEDI: float16 for GPT-J and NeoX, GPT-2 XL in float32.
    settings.REMEDI: {"gpt2": F32, "gpt2-xl": F32, "gptj": F16, "neox": F16},
    # ROME / MEMIT evaluate.py, Gu et al.'s EasyEdit: float32 for every model.
    settings.WEIGHT_EDITING: {"gpt2": F32, "gpt2-xl": F32, "gptj": F32, "neox": F32},
    settings.GENERAL_ABILITIES: {"gpt2": F32, "gpt2-xl": F32, "gptj": F32, "neox": F32},
    # ROME's causal_trace.py and belief-localization: float16 only for the 20B model.
    settings.TRACING: {"gpt2": F32, "gpt2-xl": F32, "gptj": F32, "neox": F16},
    settings.EDIT_PROBLEMS: {"gpt2": F32, "gpt2-xl": F32, "gptj": F32, "neox": F16},
}
CONFIGS = {"gpt2": GPT2, "gpt2-xl": GPT2_XL, "gptj": GPTJ, "neox": NEOX_20B}


def test_every_experiment_is_in_the_reference_table():
    assert set(REFERENCE_DTYPES) == set(settings.PRECISION)
    assert all(entry.reference for entry in settings.PRECISION.values())


@pytest.mark.parametrize("experiment", sorted(REFERENCE_DTYPES))
def test_each_experiment_defaults_to_its_reference_precision(experiment):
    for name, expected in REFERENCE_DTYPES[experiment].items():
        config = CONFIGS[name]
        assert models.default_dtype(config, CUDA, name, experiment) == expected, name
        # Without a config the paper's models are sized by their names.
        assert models.default_dtype(None, CUDA, name, experiment) == expected, name
        assert models.default_dtype(config, CPU, name, experiment) == torch.float32, name


def test_no_experiment_keeps_the_library_default():
    assert models.default_dtype(GPT2_XL, CUDA) in (torch.bfloat16, torch.float16)
    assert models.default_dtype(GPT2, CUDA) == torch.float32
    assert models.default_dtype(GPT2_XL, CPU) == torch.float32


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(KeyError, match="add it to PRECISION"):
        models.default_dtype(GPTJ, CUDA, "gptj", "no-such-experiment")


def test_explicit_dtype_wins_and_cpu_loads_float32(tokenizer, tmp_path):
    directory = save_tiny_gpt2(tokenizer, tmp_path / "tiny")
    mt = models.load_model(str(directory), experiment=settings.REMEDI)
    assert mt.dtype == torch.float32
    mt = models.load_model(str(directory), dtype="float16", experiment=settings.WEIGHT_EDITING)
    assert mt.dtype == torch.float16


def test_counterfact_evaluation_loads_weight_methods_at_their_reference_precision():
    def experiment(methods: list[str], baselines: list[str] | None = None) -> str:
        args = argparse.Namespace(methods=methods, baselines=baselines or [], baseline=None)
        return eval_fact_gen.precision_experiment(args)

    assert experiment([]) == settings.REMEDI
    assert experiment([], ["prefix"]) == settings.REMEDI
    assert experiment(["rome"]) == settings.WEIGHT_EDITING
    assert experiment(["memit", "ft"]) == settings.WEIGHT_EDITING


def test_scripts_state_the_default_dtype_and_take_dtype(capsys):
    with pytest.raises(SystemExit):
        harm_run.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--dtype" in help_text and "default: float32, the reference's" in help_text


# ---------------------------------------------------------------------------------------------
# Weight edits in half precision.

REQUEST = common.EditRequest(
    prompt="Mira Talovan lives in the city of", subject="Mira Talovan", target_new="Oslo"
)


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return weighty_gpt2(tokenizer)


@pytest.fixture(scope="module")
def rome_update(mt) -> rome.RankOneUpdate:
    hparams = rome.RomeHparams(layer=0, mom2_adjustment=False, v_num_grad_steps=5)
    return rome.compute_update(mt, REQUEST, hparams, None, ["{}"])


def half_copy(mt: models.ModelAndTokenizer) -> torch.nn.Module:
    return copy.deepcopy(mt.model).half()


def scaled(update: rome.RankOneUpdate, largest: float) -> rome.RankOneUpdate:
    """``update`` rescaled so that its largest entry is ``largest``."""
    factor = largest / float(update.delta().abs().max())
    return dataclasses.replace(update, right=update.right * factor)


def test_float32_edit_is_silent(mt, rome_update, caplog):
    with caplog.at_level(logging.WARNING):
        new = rome_update.new_weights(mt.model)
    assert not caplog.records
    weight = mt.model.get_parameter(rome_update.weight_name)
    assert new[rome_update.weight_name].dtype == torch.float32
    assert not torch.equal(new[rome_update.weight_name], weight)


def test_float16_edit_of_normal_size_keeps_most_of_the_update(mt, rome_update, caplog):
    # Entries up to 0.5 against weights of ~0.2: well within float16's resolution.
    update = scaled(rome_update, 0.5)
    model = half_copy(mt)
    with caplog.at_level(logging.WARNING):
        new = update.new_weights(model)[update.weight_name]
    assert not caplog.records
    assert new.dtype == torch.float16


def test_float16_edit_below_resolution_warns(mt, rome_update, caplog):
    # float16 near 0.2 has a spacing of 1.2e-4: entries of at most 1e-6 round away.
    update = scaled(rome_update, 1e-6)
    model = half_copy(mt)
    with caplog.at_level(logging.WARNING, logger="remedi.methods.common"):
        new = update.new_weights(model)[update.weight_name]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert update.weight_name in warnings[0] and "ROME" in warnings[0]
    assert "float16" in warnings[0] and "--dtype float32" in warnings[0]
    lost = float(warnings[0].split("lost ")[1].split("%")[0])
    assert lost > 100 * common.LOST_UPDATE_WARNING_SHARE
    # Most weights did not change at all.
    assert (new == model.get_parameter(update.weight_name)).float().mean() > 0.5


def test_float16_edit_that_overflows_raises(mt, rome_update):
    update = scaled(rome_update, 1e6)
    model = half_copy(mt)
    with pytest.raises(common.EditPrecisionError, match=r"overflows torch\.float16.*float32"):
        update.new_weights(model)
    with pytest.raises(common.EditPrecisionError, match=update.weight_name.replace(".", r"\.")):
        update.new_weights(model)


def test_memit_float64_update_checked_when_cast(mt, caplog):
    projection = models.determine_mlp_output(mt.model, 1)
    generator = torch.Generator().manual_seed(0)
    width = mt.model.config.n_embd
    residuals = torch.randn(width, 2, generator=generator, dtype=torch.float64)
    keys = torch.randn(4 * width, 2, generator=generator, dtype=torch.float64)

    def update(scale: float) -> memit.LayerUpdate:
        return memit.LayerUpdate(
            projection.weight_name, residuals * scale, keys, projection.transposed
        )

    weight32 = mt.model.get_parameter(projection.weight_name)
    weight16 = weight32.detach().half()
    with caplog.at_level(logging.WARNING):
        update(1e-2).new_weight(weight32)  # float64 -> float32: rounding loses ~1e-7
        update(1e-2).new_weight(weight16)  # entries ~1e-2: float16 keeps them
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        update(1e-8).new_weight(weight16)
    assert any(
        "MEMIT" in r.getMessage() and projection.weight_name in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(common.EditPrecisionError, match="float32"):
        update(1e5).new_weight(weight16)
