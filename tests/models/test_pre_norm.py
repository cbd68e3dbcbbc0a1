"""The pre-norm transformer option (official ``--pre_norm``): residual paths and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.checkpoint import load_model, save_model
from detr_jax.models.build import build_model
from detr_jax.models.config import tiny_model_config


def _silence_sublayers(layers):
    """Zero every sub-layer's output projection, so each layer adds nothing to its input."""
    for layer in layers:
        for attn in [layer.self_attn] + ([layer.multihead_attn] if hasattr(layer, "multihead_attn") else []):
            attn.out_proj.kernel[...] = jnp.zeros_like(attn.out_proj.kernel[...])
            attn.out_proj.bias[...] = jnp.zeros_like(attn.out_proj.bias[...])
        layer.linear2.kernel[...] = jnp.zeros_like(layer.linear2.kernel[...])
        layer.linear2.bias[...] = jnp.zeros_like(layer.linear2.bias[...])


def _layer_norm(x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_residual_path_with_silent_sublayers(pre_norm):
    """With silent sub-layers a pre-norm encoder is its final LayerNorm of the input, and a
    post-norm one is two LayerNorms per layer of it (the same value, LayerNorm being idempotent
    up to eps); a pre-norm decoder passes its zero target through to the final norm."""
    model = build_model(tiny_model_config(pre_norm=pre_norm), seed=0)
    assert hasattr(model.transformer.encoder, "norm") == pre_norm
    _silence_sublayers(model.transformer.encoder.layers)
    _silence_sublayers(model.transformer.decoder.layers)
    src = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 32)) * 3 + 1
    pos = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 32))
    mask = jnp.zeros((2, 12), bool).at[1, 9:].set(True)
    memory, _ = model.transformer.encoder(src, pos, mask)
    np.testing.assert_allclose(memory, _layer_norm(np.asarray(src)), atol=1e-4)
    hs = model.transformer.decoder(memory, pos, mask, model.query_embed.embedding[...])
    if pre_norm:  # zero target + zero updates -> the final norm of zeros is its bias (0)
        np.testing.assert_allclose(hs, 0.0, atol=1e-6)
    else:  # post-norm: every layer normalizes its (constant) input, the output is constant per query
        assert np.ptp(np.asarray(hs), axis=2).max() < 1e-4


def test_pre_norm_model_round_trips_and_differs_from_post_norm(tmp_path):
    pixels = jax.random.normal(jax.random.PRNGKey(2), (1, 64, 96, 3))
    mask = jnp.zeros((1, 64, 96), bool)
    pre = build_model(tiny_model_config(pre_norm=True), seed=0)
    post = build_model(tiny_model_config(pre_norm=False), seed=0)
    out_pre, out_post = pre(pixels, mask), post(pixels, mask)
    assert not np.allclose(out_pre["pred_boxes"], out_post["pred_boxes"])
    save_model(pre, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded(pixels, mask)["pred_boxes"], out_pre["pred_boxes"], atol=1e-6)


def test_conditional_detr_pre_norm_is_the_encoder_only(tmp_path):
    """Conditional DETR's ``pre_norm`` makes the (DETR) encoder pre-norm, with its final
    LayerNorm, and leaves the decoder post-norm (the only path the official decoder runs):
    the decoder's parameters are those of the post-norm model, and the whole model round-trips."""
    from flax import nnx

    from detr_jax.models.conditional_detr import tiny_conditional_detr_config
    pre = build_model(tiny_conditional_detr_config(pre_norm=True), seed=0)
    post = build_model(tiny_conditional_detr_config(pre_norm=False), seed=0)
    assert hasattr(pre.transformer.encoder, "norm") and not hasattr(post.transformer.encoder, "norm")
    assert all(layer.pre_norm for layer in pre.transformer.encoder.layers)
    shapes = lambda module: jax.tree.map(jnp.shape, nnx.state(module, nnx.Param))
    assert shapes(pre.transformer.decoder) == shapes(post.transformer.decoder)
    _silence_sublayers(pre.transformer.encoder.layers)
    src = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 32)) * 3 + 1
    pos = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 32))
    memory, _ = pre.transformer.encoder(src, pos, jnp.zeros((2, 12), bool))
    np.testing.assert_allclose(memory, _layer_norm(np.asarray(src)), atol=1e-4)
    pixels = jax.random.normal(jax.random.PRNGKey(2), (1, 64, 96, 3))
    mask = jnp.zeros((1, 64, 96), bool)
    out = pre(pixels, mask)
    assert np.isfinite(np.asarray(out["pred_logits"])).all()
    save_model(pre, str(tmp_path / "c"))
    np.testing.assert_allclose(load_model(str(tmp_path / "c"))(pixels, mask)["pred_boxes"],
                               out["pred_boxes"], atol=1e-6)
