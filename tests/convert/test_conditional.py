"""Conditional DETR checkpoint loading: architecture inference, placement and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.convert import CheckpointError
from detr_jax.convert.conditional import (conditional_recipe_state, infer_conditional_config,
                                          is_conditional_detr, load_conditional_detr)
from detr_jax.convert.recipe import recipe_state_for_config
from detr_jax.models.conditional_detr import tiny_conditional_detr_config
from detr_jax.models.config import tiny_model_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_state():
    return conditional_recipe_state(tiny_conditional_detr_config(num_heads=8))


def save_pth(path, state):
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    return str(path)


def test_detection_from_keys(tiny_state):
    assert is_conditional_detr(tiny_state)
    assert not is_conditional_detr(recipe_state_for_config(tiny_model_config()))


def test_config_inferred_from_shapes_and_file_name(tiny_state, tmp_path):
    model = load_conditional_detr(save_pth(tmp_path / "ConditionalDETR_r50dc5_epoch50.pth",
                                           tiny_state))
    cfg = model.config
    assert cfg["detector"] == "conditional_detr"
    assert cfg["backbone"]["dilation"] is True
    assert tuple(cfg["backbone"]["stages"]) == (1, 1, 1, 1) and cfg["backbone"]["width"] == 8
    assert (cfg["hidden_dim"], cfg["ffn_dim"], cfg["enc_layers"], cfg["dec_layers"]) == (32, 64, 2, 2)
    assert (cfg["num_queries"], cfg["num_classes"]) == (10, 5)  # 5 sigmoid classes, no no-object
    assert not load_conditional_detr(tiny_state).config["backbone"]["dilation"]
    inferred = infer_conditional_config(tiny_state, "x.pth")
    assert inferred.num_detections == 100 and inferred.num_heads == 8


def test_values_are_placed_and_transposed(tiny_state):
    model = load_conditional_detr(tiny_state)
    d = model.config["hidden_dim"]
    packed = tiny_state["transformer.encoder.layers.1.self_attn.in_proj_weight"]
    np.testing.assert_array_equal(model.transformer.encoder.layers[1].self_attn.v_proj.kernel[...],
                                  packed[2 * d:].T)
    layer0 = model.transformer.decoder.layers[0]
    np.testing.assert_array_equal(layer0.ca_qpos_proj.bias[...],
                                  tiny_state["transformer.decoder.layers.0.ca_qpos_proj.bias"])
    np.testing.assert_array_equal(
        layer0.cross_attn.out_proj.kernel[...],
        tiny_state["transformer.decoder.layers.0.cross_attn.out_proj.weight"].T)
    np.testing.assert_array_equal(
        model.transformer.decoder.query_scale.layers[0].kernel[...],
        tiny_state["transformer.decoder.query_scale.layers.0.weight"].T)
    np.testing.assert_array_equal(model.query_embed.embedding[...], tiny_state["query_embed.weight"])


def test_missing_and_unexpected_keys_are_named(tiny_state, tmp_path):
    state = dict(tiny_state)
    del state["transformer.decoder.layers.1.ca_qpos_sine_proj.bias"]
    path = save_pth(tmp_path / "missing.pth", state)
    with pytest.raises(CheckpointError,
                       match=r"missing\.pth.*missing keys: transformer\.decoder\.layers\.1\.ca_qpos_sine_proj\.bias"):
        load_conditional_detr(path)
    # a ca_qpos_proj in a later layer is not in the official model
    extra = dict(tiny_state, **{
        "transformer.decoder.layers.1.ca_qpos_proj.bias": tiny_state["transformer.decoder.layers.0.ca_qpos_proj.bias"]})
    with pytest.raises(CheckpointError, match=r"unexpected keys: transformer\.decoder\.layers\.1\.ca_qpos_proj\.bias"):
        load_conditional_detr(extra)


def test_detr_checkpoint_is_refused(tmp_path):
    path = save_pth(tmp_path / "detr.pth", recipe_state_for_config(tiny_model_config()))
    with pytest.raises(CheckpointError, match=r"detr\.pth: not a Conditional DETR checkpoint"):
        load_conditional_detr(path)


@pytest.mark.parametrize("attention", ["act:L=8,r=4", "kmeans:C=4"])
def test_encoder_attentions_run_on_the_loaded_model(tiny_state, attention):
    """DETR's encoder attentions apply unchanged: same parameters, finite outputs, and the
    decoder and heads see the encoder's output."""
    exact = load_conditional_detr(tiny_state)
    other = load_conditional_detr(tiny_state, encoder_attention=attention)
    assert other.config["encoder_attention"] == other.attention_spec.to_string()
    pixels = jax.random.normal(jax.random.key(0), (1, 64, 96, 3))
    mask = jnp.zeros((1, 64, 96), bool)
    out = other(pixels, mask, rng=jax.random.key(1))
    ref = exact(pixels, mask)
    assert out["pred_logits"].shape == ref["pred_logits"].shape == (1, 10, 5)
    assert np.all(np.isfinite(out["pred_logits"])) and np.all(np.isfinite(out["pred_boxes"]))
    assert len(out["encoder_stats"]) == 2
