"""Parity with the released Conditional-DETR-ENACT code (GSavathrakis/ENACT, R101-C5,
300 queries, sigma 3) on the recipe weights, and loading/converting checkpoints that hold
its ENACT encoder modules."""

import jax
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention.enact import ENACT, ENACTAttention
from detr_jax.convert import CheckpointError
from detr_jax.convert.conditional import conditional_recipe_state
from detr_jax.models.conditional_detr import ConditionalDETR, tiny_conditional_detr_config
from tests.models.test_conditional_detr import check_postprocess, official_inputs
from tests.fixture_vectors import load_fixture, rel, record_errors

R101 = (3, 4, 23, 3)


@pytest.fixture(scope="module")
def released():
    return load_fixture("conditional_detr_enact_r101_released")


@pytest.fixture(scope="module")
def model(released):
    return detr_jax.load_torch_checkpoint(released[0])


@pytest.fixture(scope="module")
def forward(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, pixel_values, padding_mask, sizes):
        module = nnx.merge(graphdef, state)
        out = module(pixel_values, padding_mask, return_intermediates=True)
        return out, module.postprocess(out, sizes)

    return lambda *args: run(state, *args)


def test_released_checkpoint_loads_as_released_enact(released, model):
    state, _ = released
    assert isinstance(model, ConditionalDETR)
    cfg = model.config
    assert cfg["encoder_attention"] == "enact:sigma=3,variant=released"
    assert tuple(cfg["backbone"]["stages"]) == R101 and cfg["backbone"]["dilation"] is False
    assert (cfg["num_queries"], cfg["num_classes"]) == (300, 91)
    layers = model.transformer.encoder.layers
    assert all(isinstance(layer.self_attn, ENACTAttention) for layer in layers)
    attn = layers[5].self_attn
    prefix = "transformer.encoder.layers.5.self_attn."
    np.testing.assert_array_equal(attn.v_proj.kernel[...], state[prefix + "W_v.weight"].T)
    np.testing.assert_array_equal(attn.out_proj.bias[...], state[prefix + "W_o.bias"])
    np.testing.assert_array_equal(attn.entropy.kernel[...], state[prefix + "W_prob.weight"].T)
    np.testing.assert_array_equal(
        model.transformer.decoder.layers[2].ca_qpos_sine_proj.kernel[...],
        state["transformer.decoder.layers.2.ca_qpos_sine_proj.weight"].T)


def test_non_enact_setting_is_refused(released):
    state, _ = released
    with pytest.raises(CheckpointError, match="ENACT attention modules.*not 'act:L=32"):
        detr_jax.load_torch_checkpoint(state, encoder_attention="act:L=32")
    with pytest.raises(CheckpointError, match="ENACT attention modules.*not 'exact'"):
        detr_jax.load_torch_checkpoint(state, encoder_attention="exact")


@pytest.mark.parametrize("case,images", [("enact_single", ["image0"]),
                                         ("enact_batch", ["same0", "same1"])])
def test_matches_released_conditional_detr_enact(released, forward, case, images, record_property):
    _, ref = released
    pixels, mask, sizes = official_inputs([ref[name] for name in images])
    assert not np.asarray(mask).any()  # the released ENACT ignores padding: none here
    out, (scores, labels, boxes) = forward(pixels, mask, sizes)
    record_errors(record_property, out, ref, case, np.asarray(out["memory"]).transpose(1, 0, 2), ref[f"{case}/memory"])
    assert rel(np.asarray(out["memory"]).transpose(1, 0, 2), ref[f"{case}/memory"]) < 1e-4
    np.testing.assert_allclose(out["pred_logits"], ref[f"{case}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], ref[f"{case}/pred_boxes"], rtol=0, atol=1e-4)
    check_postprocess(ref, case, sizes, scores, labels, boxes)


@pytest.fixture(scope="module")
def tiny_state():
    cfg = tiny_conditional_detr_config(num_heads=8,
                                       encoder_attention="enact:sigma=3,variant=released")
    state = conditional_recipe_state(cfg)
    assert "transformer.encoder.layers.0.self_attn.W_prob.weight" in state
    assert not any(k.endswith("in_proj_weight") and ".encoder." in k for k in state)
    return state


def test_caller_enact_setting_is_kept(tiny_state):
    model = detr_jax.load_torch_checkpoint(tiny_state,
                                           encoder_attention="enact:sigma=5,variant=released")
    assert isinstance(model, ConditionalDETR)
    assert model.config["encoder_attention"] == "enact:sigma=5,variant=released"
    paper = detr_jax.load_torch_checkpoint(tiny_state, encoder_attention="enact:sigma=3")
    assert paper.config["encoder_attention"] == ENACT(sigma=3.0).to_string()


def test_convert_cli_round_trip(tiny_state, tmp_path):
    """convert_torch_weights.py writes a checkpoint that detr_jax.load_model reads back as
    the model load_torch_checkpoint builds: same config, every variable equal (so the same
    outputs)."""
    torch = pytest.importorskip("torch")
    from detr_jax.convert.cli import main
    path = tmp_path / "conditional-detr-enact-tiny.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in tiny_state.items()}}, path)
    assert main(["--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 0
    loaded = detr_jax.load_model(str(tmp_path / "out"))
    direct = detr_jax.load_torch_checkpoint(str(path))
    assert isinstance(loaded, ConditionalDETR)
    assert loaded.config["encoder_attention"] == "enact:sigma=3,variant=released"
    assert loaded.config == direct.config
    attn = loaded.transformer.encoder.layers[0].self_attn
    assert isinstance(attn, ENACTAttention) and attn.spec == ENACT(sigma=3.0, variant="released")
    np.testing.assert_array_equal(attn.q_proj.kernel[...],
                                  tiny_state["transformer.encoder.layers.0.self_attn.W_q.weight"].T)
    ours = dict(nnx.to_flat_state(nnx.state(loaded)))
    theirs = dict(nnx.to_flat_state(nnx.state(direct)))
    assert ours.keys() == theirs.keys()
    for key, var in ours.items():
        np.testing.assert_array_equal(var.get_value(), theirs[key].get_value(), err_msg=str(key))
