"""Attention dropout: on the softmax probabilities in training, never in evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import MultiHeadAttention
from detr_jax.attention.softmax import masked_softmax_attention
from detr_jax.models.config import tiny_model_config
from detr_jax.models.transformer import attention_dropout_rate


def _uniform_probe(n=64, heads=2):
    """Zero queries (uniform probabilities 1/n) and one-hot values: the output rows are
    the (dropped) probabilities themselves, (1, n, heads, n)."""
    q = jnp.zeros((1, n, heads, 4))
    k = jax.random.normal(jax.random.key(0), (1, n, heads, 4))
    v = jnp.broadcast_to(jnp.eye(n)[None, :, None, :], (1, n, heads, n))
    return q, k, v


def test_softmax_dropout_keeps_the_expected_fraction_and_rescales():
    n, rate = 64, 0.25
    q, k, v = _uniform_probe(n)
    out = np.asarray(masked_softmax_attention(q, k, v, None, dropout_rate=rate,
                                              dropout_rng=jax.random.key(1)))
    kept = out != 0
    assert abs(kept.mean() - (1 - rate)) < 0.02          # 8192 probabilities
    np.testing.assert_allclose(out[kept], 1.0 / n / (1 - rate), rtol=1e-5)
    same = masked_softmax_attention(q, k, v, None, dropout_rate=rate, dropout_rng=jax.random.key(1))
    other = masked_softmax_attention(q, k, v, None, dropout_rate=rate, dropout_rng=jax.random.key(2))
    np.testing.assert_array_equal(out, same)
    assert not np.array_equal(out, np.asarray(other))
    # no key or rate 0: the plain softmax
    plain = masked_softmax_attention(q, k, v, None)
    np.testing.assert_allclose(plain, 1.0 / n, rtol=1e-6)
    np.testing.assert_array_equal(masked_softmax_attention(q, k, v, None, dropout_rate=0.0,
                                                           dropout_rng=jax.random.key(1)), plain)


def test_padded_keys_stay_unattended_with_dropout():
    q, k, v = _uniform_probe(16)
    mask = jnp.arange(16)[None] >= 10
    out = np.asarray(masked_softmax_attention(q, k, v, mask, dropout_rate=0.5,
                                              dropout_rng=jax.random.key(3)))
    assert np.all(out[..., 10:] == 0)


def test_backend_with_dropout_runs_xla_and_only_with_a_key():
    backend = AttentionBackend("flash_interpret", training="xla")
    assert backend.with_dropout(0.1, None) is backend
    assert backend.with_dropout(0.0, jax.random.key(0)) is backend
    dropping = backend.with_dropout(0.1, jax.random.key(0))
    assert dropping.kernel == "xla" and dropping.dropping and not dropping.fused


def test_module_drops_only_with_a_dropout_key():
    attn = MultiHeadAttention(16, 2, backend=AttentionBackend("xla"), attention_dropout=0.3,
                              rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(4), (2, 12, 16))
    ref, _ = MultiHeadAttention(16, 2, backend=AttentionBackend("xla"), rngs=nnx.Rngs(0))(x, x, x)
    evaluated, _ = attn(x, x, x, rng=jax.random.key(9))         # hash key only: no dropout
    np.testing.assert_array_equal(evaluated, ref)
    a, _ = attn(x, x, x, dropout_rng=jax.random.key(5))
    b, _ = attn(x, x, x, dropout_rng=jax.random.key(5))
    c, _ = attn(x, x, x, dropout_rng=jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ref) and not np.allclose(a, c)
    assert attn.backend.dropout_rng is None                     # the built backend is back


def test_rate_comes_from_the_config():
    assert attention_dropout_rate(tiny_model_config()) == pytest.approx(0.1)   # = dropout
    assert attention_dropout_rate(tiny_model_config(dropout=0.0)) == 0.0
    assert attention_dropout_rate(tiny_model_config(attention_dropout=0.3)) == pytest.approx(0.3)
    assert attention_dropout_rate(tiny_model_config(dropout=0.2, attention_dropout=0.0)) == 0.0


def test_model_drops_attention_in_training_only():
    from detr_jax.models.build import build_model
    cfg = tiny_model_config(dropout=0.0, attention_dropout=0.5, attention_backend="xla")
    model = build_model(cfg)
    plain = build_model(tiny_model_config(dropout=0.0, attention_dropout=0.0,
                                          attention_backend="xla"))
    layers = model.transformer.encoder.layers
    assert layers[0].self_attn.attention_dropout == 0.5
    assert model.transformer.decoder.layers[1].multihead_attn.attention_dropout == 0.5
    pixels = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    mask = jnp.zeros((1, 64, 64), bool)
    key = jax.random.key(7)
    evaluated = model(pixels, mask, rng=key)["pred_boxes"]
    np.testing.assert_array_equal(evaluated, plain(pixels, mask, rng=key)["pred_boxes"])
    trained = model(pixels, mask, rng=key, train=True)["pred_boxes"]
    again = model(pixels, mask, rng=key, train=True)["pred_boxes"]
    other = model(pixels, mask, rng=jax.random.key(8), train=True)["pred_boxes"]
    np.testing.assert_array_equal(trained, again)
    assert not np.allclose(trained, evaluated) and not np.allclose(trained, other)
    # attention dropout 0 (the only dropout of this config): training equals evaluation
    np.testing.assert_allclose(plain(pixels, mask, rng=key, train=True)["pred_boxes"],
                               evaluated, rtol=1e-6)


@pytest.mark.parametrize("setting", ["act:L=4,r=1,ladder=1", "act:L=4,r=1,group=QK,ladder=1",
                                     "kmeans:C=4,iterations=2", "enact"])
def test_clustered_variants_drop_their_attention_probabilities(setting):
    from detr_jax.attention import parse_attention
    spec = parse_attention(setting)
    attn = spec.build(16, 2, layer_index=0, num_layers=1, backend=AttentionBackend("xla"),
                      rngs=nnx.Rngs(0))
    attn.attention_dropout = 0.5
    x = jax.random.normal(jax.random.key(4), (1, 16, 16))
    mask = jnp.arange(16)[None] >= 14
    hash_key = jax.random.key(2)
    ref, _ = attn(x, x, x, mask, hash_key)
    a, _ = attn(x, x, x, mask, hash_key, dropout_rng=jax.random.key(5))
    b, _ = attn(x, x, x, mask, hash_key, dropout_rng=jax.random.key(5))
    c, _ = attn(x, x, x, mask, hash_key, dropout_rng=jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ref) and not np.allclose(a, c)
    attn.attention_dropout = 0.0
    np.testing.assert_array_equal(attn(x, x, x, mask, hash_key, dropout_rng=jax.random.key(5))[0],
                                  ref)
