"""Conditional DETR's FLOPs count and the encoder-attention inputs used by the plots."""

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.flops import count_flops
from detr_jax.models.conditional_detr import build_conditional_detr, tiny_conditional_detr_config


def test_decoder_count_by_hand():
    """Tiny model, 64x96 input -> 2x3 = 6 tokens (stride 32), Q = 10, d = 32, FFN 64,
    2 decoder layers, 5 classes. A d x d linear on Q rows costs Q*d*d + Q*d MACs."""
    cfg = tiny_conditional_detr_config()
    model = build_conditional_detr(cfg, abstract=True)
    got = model.flops((64, 96))
    q, d, n, f, c = 10, 32, 6, 64, 5
    lin = lambda rows, i, o: rows * i * o + rows * o
    assert got["tokens"] == n
    assert got["decoder_self_attention"] == 2 * (6 * lin(q, d, d) + 2 * q * q * d)
    assert got["decoder_cross_attention"] == (2 * (3 * lin(q, d, d) + 3 * lin(n, d, d)
                                                   + q * n * 2 * d + q * n * d) + lin(q, d, d))
    assert got["decoder_conditioning"] == lin(q, d, d) + lin(q, d, 2) + 2 * lin(q, d, d)
    assert got["decoder_ffn"] == 2 * (lin(q, d, f) + lin(q, f, d))
    assert got["heads"] == 2 * (lin(q, d, c) + 2 * lin(q, d, d) + lin(q, d, 4))
    # backbone, input_proj and encoder are DETR's
    detr = count_flops(dict(cfg.to_dict(), num_classes=c - 1), (64, 96))
    for key in ("backbone", "input_proj", "encoder_attention", "encoder_ffn"):
        assert got[key] == detr[key]
    assert got["transformer"] == (detr["transformer"] - detr["decoder"] - detr["heads"]
                                  + got["decoder"] + got["heads"])
    assert got["total"] == got["backbone"] + got["transformer"]


def test_encoder_attention_inputs_reproduce_the_encoder():
    model = build_conditional_detr(tiny_conditional_detr_config(), seed=3)
    pixels = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    mask = jnp.zeros((2, 64, 96), bool).at[1, 40:].set(True)
    calls, hw = model.encoder_attention_inputs(pixels, mask, None)
    assert hw == (2, 3) and len(calls) == len(model.encoder_attention_layers()) == 2
    features, fmask, pos = model.backbone_features(pixels, mask)
    memory, _ = model.encode(features, fmask, pos)
    queries, keys, values, key_mask, _ = calls[-1]
    np.testing.assert_array_equal(key_mask, fmask.reshape(2, -1))
    last = model.transformer.encoder.layers[-1]
    out, _ = last(values, queries - values, key_mask)
    np.testing.assert_allclose(out, memory, rtol=1e-5, atol=1e-5)
