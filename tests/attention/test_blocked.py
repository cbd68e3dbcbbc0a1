"""key_block_attention: the masked softmax attention over the first num_keys slots, its
gradients, one compile for every count, and memory that does not grow with Nq x Nk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.attention.softmax import masked_softmax_attention
from detr_jax.attention.blocked import key_block_attention


def case(seed=0, batch=2, nq=37, nk=50, heads=3, dh=8):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, nq, heads, dh)), jnp.float32) * dh ** -0.5
    k = jnp.asarray(rng.normal(size=(batch, nk, heads, dh)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, nk, heads, dh)), jnp.float32)
    counts = np.array([29, 41])[:batch]
    valid = np.arange(nk)[None, :] < counts[:, None]
    valid[0, 3] = False  # a hole inside the used slots as well
    return q, k, v, jnp.asarray(valid), int(counts.max())


@pytest.mark.parametrize("block", [4, 16, 64])
def test_matches_masked_softmax_attention_and_its_gradients(block):
    q, k, v, valid, num_keys = case()
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 37, 3, 8)), jnp.float32)
    ours = lambda q, k, v: jnp.sum(key_block_attention(q, k, v, valid, num_keys, block=block) * weights)
    ref = lambda q, k, v: jnp.sum(masked_softmax_attention(q, k, v, ~valid) * weights)
    np.testing.assert_allclose(key_block_attention(q, k, v, valid, num_keys, block=block),
                               masked_softmax_attention(q, k, v, ~valid), rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.grad(ours, argnums=(0, 1, 2))(q, k, v),
                         jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_traced_counts_share_one_compile_and_rows_without_keys_are_zero():
    q, k, v, _, _ = case()
    traces = []

    @jax.jit
    def run(valid, num_keys):
        traces.append(1)
        return key_block_attention(q, k, v, valid, num_keys, block=8)

    for count in (5, 17, 50):
        valid = jnp.broadcast_to(jnp.arange(50) < count, (2, 50))
        np.testing.assert_allclose(run(valid, count), masked_softmax_attention(q, k, v, ~valid),
                                   rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
    empty = run(jnp.zeros((2, 50), bool), 0)
    assert np.all(np.asarray(empty) == 0.0)


def test_training_memory_holds_one_tile_of_logits_not_the_whole_matrix():
    batch, n, heads, dh = 2, 1024, 4, 16
    q = jnp.zeros((batch, n, heads, dh))
    k = v = jnp.zeros((batch, n, heads, dh))
    valid = jnp.ones((batch, n), bool)

    def temp_bytes(attention):
        loss = lambda q, k, v, w: jnp.sum(attention(q, k, v) * w)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return grad.lower(q, k, v, q).compile().memory_analysis().temp_size_in_bytes

    full = temp_bytes(lambda q, k, v: masked_softmax_attention(q, k, v, ~valid))
    blocked = temp_bytes(lambda q, k, v: key_block_attention(q, k, v, valid, n, block=64))
    logits_bytes = batch * heads * n * n * 4
    assert full >= logits_bytes              # the reference keeps (B, H, N, N) logits
    assert blocked < logits_bytes / 4, (blocked, logits_bytes)


def tile_masks(rng, rate, shape, nk, block):
    """The keep factors key_block_attention draws: one (B, H, Nq, block) tile per block."""
    tiles = [jnp.where(jax.random.bernoulli(jax.random.fold_in(rng, j), 1.0 - rate, shape[:3] + (block,)),
                       1.0 / (1.0 - rate), 0.0) for j in range(-(-nk // block))]
    return jnp.concatenate(tiles, axis=-1)[..., :nk]


@pytest.mark.parametrize("block", [8, 16])
def test_dropout_matches_softmax_then_dropout_and_its_gradients(block):
    """With dropout: softmax over the valid keys, then the probabilities times the keep
    factors of each tile's mask; the backward pass redraws the same masks."""
    q, k, v, valid, num_keys = case()
    rate, rng = 0.3, jax.random.key(7)
    batch, nq, heads, _ = q.shape
    keep = tile_masks(rng, rate, (batch, heads, nq), k.shape[1], block)   # (B, H, Nq, Nk)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 37, 3, 8)), jnp.float32)

    def reference(q, k, v):
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        logits = jnp.where(valid[:, None, None, :], logits, -jnp.inf)
        probs = jnp.where(valid[:, None, None, :], jax.nn.softmax(logits, axis=-1), 0.0)
        return jnp.einsum("bhqk,bkhd->bqhd", probs * keep, v)

    ours = lambda q, k, v: key_block_attention(q, k, v, valid, num_keys, block=block,
                                               dropout_rate=rate, dropout_rng=rng)
    out = ours(q, k, v)
    np.testing.assert_allclose(out, reference(q, k, v), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, key_block_attention(q, k, v, valid, num_keys, block=block))
    loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v) * weights))
    for got, want in zip(jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v),
                         jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dropout_rate=1.0"):
        key_block_attention(q, k, v, valid, num_keys, dropout_rate=1.0, dropout_rng=rng)
