"""Conditional DETR's FLOPs count and the encoder-attention inputs used by the plots."""

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.flops import count_flops
from detr_jax.models.build import build_model
from detr_jax.models.conditional_detr import tiny_conditional_detr_config


def test_decoder_count_by_hand():
    """Tiny model, 64x96 input -> 2x3 = 6 tokens (stride 32), Q = 10, d = 32, FFN 64,
    2 decoder layers, 5 classes. A d x d linear on Q rows costs Q*d*d + Q*d MACs."""
    cfg = tiny_conditional_detr_config()
    model = build_model(cfg, abstract=True)
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
    model = build_model(tiny_conditional_detr_config(), seed=3)
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


def test_train_mode_dropout_and_gradients():
    """Dropout acts in train mode only. With recipe weights (non-zero biases) every decoder
    parameter gets a gradient except those of layer 0's self-attention weights and its
    value kernel: the content entering layer 0 is zero, so every value is ``sa_v_proj``'s
    bias and the attention weights do not matter (as in the official model), and of the
    key biases."""
    from flax import nnx
    from detr_jax.convert.conditional import conditional_recipe_state, load_conditional_detr
    cfg = tiny_conditional_detr_config()
    model = load_conditional_detr(conditional_recipe_state(cfg), num_heads=cfg.num_heads)
    pixels = jax.random.normal(jax.random.key(0), (1, 64, 96, 3))
    mask = jnp.zeros((1, 64, 96), bool)
    a = model(pixels, mask, rng=jax.random.key(1), train=True)["pred_logits"]
    b = model(pixels, mask, rng=jax.random.key(2), train=True)["pred_logits"]
    c = model(pixels, mask, rng=jax.random.key(1))["pred_logits"]
    d = model(pixels, mask, rng=jax.random.key(2))["pred_logits"]
    assert not np.allclose(a, b) and np.allclose(c, d)

    def loss(m):
        out = m(pixels, mask)
        return (out["pred_logits"].sum() + out["pred_boxes"].sum()
                + sum(x["pred_boxes"].sum() for x in out["aux_outputs"]))

    flat = dict(nnx.to_flat_state(nnx.grad(loss)(model)))
    norms = {p: float(np.linalg.norm(v.get_value())) for p, v in flat.items()}
    assert all(np.isfinite(n) for n in norms.values())
    largest = max(norms.values())
    zero = {p[3:] for p, n in norms.items()
            if p[:2] == ("transformer", "decoder") and n < 1e-6 * largest}
    expected = {(0, name, leaf) for name in ("sa_qcontent_proj", "sa_kcontent_proj",
                                             "sa_qpos_proj", "sa_kpos_proj")
                for leaf in ("kernel", "bias")} | {(0, "sa_v_proj", "kernel")}
    # a key bias adds the same logit to every key of a query: softmax ignores it
    expected |= {(layer, name, "bias") for layer in range(cfg.dec_layers)
                 for name in ("sa_kcontent_proj", "sa_kpos_proj", "ca_kcontent_proj",
                              "ca_kpos_proj")}
    assert zero == expected, zero ^ expected


def test_bfloat16_close_to_float32():
    cfg32 = tiny_conditional_detr_config()
    m32 = build_model(cfg32, seed=4)
    m16 = build_model(tiny_conditional_detr_config(dtype="bfloat16"), seed=4)
    pixels = jax.random.normal(jax.random.key(0), (1, 64, 96, 3))
    mask = jnp.zeros((1, 64, 96), bool)
    b32, b16 = m32(pixels, mask)["pred_boxes"], m16(pixels, mask)["pred_boxes"]
    assert b16.dtype == jnp.float32
    assert float(jnp.abs(b32 - b16).max()) < 2e-2
