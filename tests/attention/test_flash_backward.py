"""The fused kernel's attention dropout and backward kernels (Pallas interpreter) against
the XLA reference with the same dropout mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.attention.flash import (dropout_keep, dropout_seed, flash_attention,
                                      reference_attention)
from tests.attention.test_flash import inputs

VALID = np.arange(100)[None] < np.array([[100], [37]])  # image 1: 37 real keys of 100
COUNTS = np.array([[70, 10, 33], [1, 64, 0]], np.int32)  # inside, at and across blocks


def test_dropout_keep_is_a_seeded_mask_of_the_rate():
    rows, cols = jnp.arange(200), jnp.arange(300)
    heads = jnp.arange(6).reshape(2, 3)
    keep = np.asarray(dropout_keep(jnp.int32(7), heads, rows, cols, 300, 0.1))
    assert keep.shape == (2, 3, 200, 300)
    assert abs(keep.mean() - 0.9) < 0.003  # 360,000 draws: 6 standard deviations is 0.003
    assert np.all(np.abs(keep.mean(axis=(2, 3)) - 0.9) < 0.01)  # every (image, head)
    np.testing.assert_array_equal(keep, dropout_keep(jnp.int32(7), heads, rows, cols, 300, 0.1))
    other = np.asarray(dropout_keep(jnp.int32(8), heads, rows, cols, 300, 0.1))
    assert 0.15 < (keep != other).mean() < 0.21  # independent masks differ on 2 * 0.9 * 0.1
    # a tile of rows and columns is the same part of the whole mask
    tile = dropout_keep(jnp.int32(7), jnp.int32(4), rows[64:128], cols[32:96], 300, 0.1)
    np.testing.assert_array_equal(tile, keep[1, 1, 64:128, 32:96])


@pytest.mark.parametrize("splits", [1, 2])
def test_dropout_in_the_kernel_matches_the_reference(splits):
    q, k, v = inputs(seed=11)
    valid, counts = jnp.asarray(VALID), jnp.asarray(COUNTS)
    rng = jax.random.key(3)
    out = flash_attention(q, k, v, valid, counts, block_q=16, block_k=16, key_splits=splits,
                          dropout_rate=0.2, dropout_rng=rng, interpret=True)
    ref = reference_attention(q, k, v, valid, counts, None, 0.2, dropout_seed(rng))
    np.testing.assert_allclose(out, ref, atol=3e-6)
    plain = flash_attention(q, k, v, valid, counts, block_q=16, block_k=16, interpret=True)
    assert float(jnp.abs(out - plain).max()) > 0.05  # something was dropped
    # no key, or a zero rate: no dropout
    np.testing.assert_array_equal(
        flash_attention(q, k, v, valid, counts, block_q=16, block_k=16, dropout_rate=0.2,
                        interpret=True), plain)


@pytest.mark.parametrize("rate,ragged,splits", [(0.0, False, 1), (0.2, False, 1), (0.0, True, 2),
                                               (0.2, True, 1), (0.2, True, 3)])
def test_backward_kernels_give_the_reference_gradients(rate, ragged, splits):
    """Padded keys, ragged query rows, a head dim padded inside, and the forward pass's
    log-sum-exp from one or several key ranges."""
    q, k, v = inputs(seed=12, nq=70, nk=100, dim=24)  # head dim padded to 32 inside
    valid = jnp.asarray(VALID)
    counts = jnp.asarray(COUNTS) if ragged else None
    rng = jax.random.key(5)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def loss(attend):
        return lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)

    kernel = lambda q, k, v: flash_attention(q, k, v, valid, counts, block_q=16, block_k=32,
                                             dropout_rate=rate, dropout_rng=rng,
                                             key_splits=splits, backward="kernel",
                                             interpret=True)
    reference = lambda q, k, v: reference_attention(q, k, v, valid, counts, None, rate,
                                                    dropout_seed(rng))
    got = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5, err_msg=f"d{name}")
    assert float(jnp.abs(got[1][1, 37:]).max()) == 0.0  # padded keys get no gradient
    if ragged:
        assert float(jnp.abs(got[0][1, 1:, 0]).max()) == 0.0  # rows past the count neither
    # the XLA backward gives the same gradients
    xla = lambda q, k, v: flash_attention(q, k, v, valid, counts, block_q=16, block_k=32,
                                          dropout_rate=rate, dropout_rng=rng, interpret=True)
    for g, w in zip(got, jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


def test_backward_options_are_checked():
    q, k, v = inputs()
    sizes = jnp.ones((2, 3, 70), jnp.float32)
    with pytest.raises(ValueError, match="query_divisors"):
        flash_attention(q, k, v, None, None, sizes, backward="kernel", interpret=True)
    with pytest.raises(ValueError, match="backward='fused'"):
        flash_attention(q, k, v, backward="fused", interpret=True)
    with pytest.raises(ValueError, match="dropout_rate=1.0"):
        flash_attention(q, k, v, dropout_rate=1.0, dropout_rng=jax.random.key(0), interpret=True)


def test_fused_training_backend_keeps_the_kernel_for_dropout_and_gradients():
    """``attention_training="fused"``: a training call with dropout stays on the kernel
    (mask and gradient as flash_attention's backward="kernel"); "xla" moves it to XLA."""
    from detr_jax.attention.backend import AttentionBackend, resolve_backend
    q, k, v = inputs(seed=13)
    padding = jnp.asarray(~VALID)
    rng = jax.random.key(9)
    fused = AttentionBackend("flash_interpret", training="fused").with_dropout(0.2, rng)
    assert fused.kernel == "flash_interpret" and fused.dropping and fused.tiled
    xla = AttentionBackend("flash_interpret", training="xla").with_dropout(0.2, rng)
    assert AttentionBackend("flash_interpret").training == "fused"  # the default
    assert xla.kernel == "xla" and not xla.tiled
    cotangent = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
    loss = lambda attend: lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)
    got = jax.grad(loss(lambda q, k, v: fused.attention(q, k, v, padding)), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: reference_attention(
        q, k, v, jnp.asarray(VALID), None, None, 0.2, dropout_seed(rng))), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="training"):
        resolve_backend("xla", training="kernel")


def _tiny(detector):
    from detr_jax.models.anchor_detr import tiny_anchor_detr_config
    from detr_jax.models.conditional_detr import tiny_conditional_detr_config
    from detr_jax.models.config import tiny_model_config
    return {"detr": tiny_model_config, "conditional": tiny_conditional_detr_config,
            "anchor": tiny_anchor_detr_config}[detector]


# The kernel's distinct training calls: plain attention (DETR; K-means attends its
# prototypes through the same call), ACT's prototypes (query divisors: the XLA
# recomputation), Conditional DETR's concatenated cross-attention heads and Anchor DETR's
# decoder self-attention (ENACT's encoder layers compute on XLA: no kernel call).
@pytest.mark.parametrize("detector,encoder", [
    ("detr", "exact"), ("detr", "act:L=8"), ("conditional", "exact"), ("anchor", "exact")])
def test_model_trains_through_the_fused_kernels(detector, encoder):
    """Tiny detectors on the interpreted kernel, each encoder attention: with
    attention_training="fused" (the default) and no attention dropout the loss and
    gradients equal those of "xla" (the XLA recomputation); with dropout the kernel
    drops and the gradients stay finite."""
    from flax import nnx
    from detr_jax.models.build import build_model
    pixels = jax.random.normal(jax.random.key(0), (1, 64, 48, 3))
    mask = jnp.zeros((1, 64, 48), bool).at[:, :, 32:].set(True)
    key = jax.random.key(7)

    def grads(training, rate):
        # Anchor DETR's attentions drop at the model's dropout rate; the others have their own
        rates = dict(dropout=rate) if detector == "anchor" else dict(dropout=0.0,
                                                                     attention_dropout=rate)
        model = build_model(_tiny(detector)(
            **rates, enc_layers=1, dec_layers=1, encoder_attention=encoder,
            attention_backend="flash_interpret", attention_training=training))
        graph, state = nnx.split(model)

        def loss(state):
            out = nnx.merge(graph, state)(pixels, mask, rng=key, train=True)
            return jnp.sum(out["pred_boxes"] ** 2) + jnp.sum(out["pred_logits"] ** 2) * 1e-2
        return jax.jit(jax.value_and_grad(loss))(state)

    (loss_fused, grad_fused), (loss_xla, grad_xla) = grads("fused", 0.0), grads("xla", 0.0)
    np.testing.assert_allclose(loss_fused, loss_xla, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad_fused), jax.tree.leaves(grad_xla)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    dropped = grads("fused", 0.5)
    assert abs(float(dropped[0]) - float(loss_fused)) > 1e-4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(dropped[1]))


def test_backward_kernels_in_bf16_follow_the_fp32_gradients():
    q, k, v = (x.astype(jnp.bfloat16) for x in inputs(seed=14))
    valid = jnp.asarray(VALID)
    rng = jax.random.key(6)
    cotangent = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)
    kernel = lambda q, k, v: jnp.sum(flash_attention(
        q, k, v, valid, dropout_rate=0.1, dropout_rng=rng, backward="kernel",
        interpret=True).astype(jnp.float32) * cotangent)
    reference = lambda q, k, v: jnp.sum(reference_attention(
        q, k, v, valid, None, None, 0.1, dropout_seed(rng)) * cotangent)
    got = jax.grad(kernel, argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(reference, argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16
        error = float(jnp.abs(g.astype(jnp.float32) - w).max() / jnp.abs(w).max())
        assert error < 2e-2, error
