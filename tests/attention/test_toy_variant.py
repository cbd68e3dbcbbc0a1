"""A new attention variant is one module plus one registration line.

The toy variant below (defined here, not in the library) groups each image's valid tokens
into two fixed clusters, even and odd token index; each cluster's mean query attends to
all keys. Registered with one line, it runs through the model's statistics, the FLOPs
counter and the cluster maps of the plots with no change to any of them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.attention import AttentionSpec, EncoderAttention, LayerStats, register_attention
from detr_jax.attention.base import count_valid
from detr_jax.attention.clustering import (broadcast_to_members, cluster_means, from_rows,
                                           row_valid, to_rows)
from detr_jax.attention.costs import attention_product_macs
from detr_jax.models.build import build_model
from detr_jax.models.config import tiny_model_config


class EvenOddAttention(EncoderAttention):
    """Two clusters per (image, head): even and odd token indices (padding: none)."""

    def ids(self, key_padding_mask, batch: int, n: int) -> jax.Array:
        """(B * H, N) int32 cluster ids, -1 on padding."""
        valid = row_valid(key_padding_mask, batch, self.num_heads, n)
        return jnp.where(valid, jnp.arange(n, dtype=jnp.int32) % 2, -1)

    def attend(self, q, k, v, key_padding_mask, rng):
        del rng
        batch, n, heads, _ = q.shape
        ids = self.ids(key_padding_mask, batch, n)
        prototypes, sizes = cluster_means(to_rows(q), ids, 2)
        out = self.backend.attention(from_rows(prototypes, batch), k, v, key_padding_mask)
        out = from_rows(broadcast_to_members(to_rows(out), ids), batch)
        valid = row_valid(key_padding_mask, batch, 1, n)
        return out, LayerStats(
            num_valid=count_valid(valid),
            num_clusters=(sizes > 0).sum(axis=-1, dtype=jnp.int32).reshape(batch, heads),
            capacity=jnp.asarray(2, jnp.int32))

    def assignments(self, queries, keys, values, key_padding_mask, rng):
        batch, n, _ = queries.shape
        return self.ids(key_padding_mask, batch, n).reshape(batch, self.num_heads, n)


@dataclasses.dataclass(frozen=True)
class EvenOdd(AttentionSpec):
    name = "even_odd"
    needs_stats = True

    def build(self, d_model, num_heads, *, layer_index, num_layers, dtype=None, backend=None,
              rngs):
        return EvenOddAttention(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                                backend=backend, rngs=rngs)

    def layer_flops(self, layer_index, *, d_model, num_heads, tokens, valid_tokens, stats=None):
        clusters = float(np.mean(np.asarray(stats.num_clusters)))
        return {"products": attention_product_macs(clusters, valid_tokens, d_model),
                "hashing_and_clustering": float(valid_tokens * d_model),  # the means
                "mean_clusters": clusters, "cluster_ratio": clusters / valid_tokens}


register_attention("even_odd", EvenOdd, "even_odd")


@pytest.fixture(scope="module")
def run():
    cfg = tiny_model_config(encoder_attention="even_odd")
    model = build_model(cfg, seed=0)
    pixels = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    mask = jnp.zeros((2, 64, 96), bool).at[1, :, 64:].set(True)  # image 1 is 64x64
    out = model(pixels, mask, rng=jax.random.key(1))
    return cfg, model, pixels, mask, out


def test_model_statistics(run):
    from detr_jax.benchmark import cluster_ratios
    _, model, _, _, out = run
    assert isinstance(model.transformer.encoder.layers[0].self_attn, EvenOddAttention)
    stats = out["encoder_stats"]
    assert len(stats) == 2 and all(isinstance(s, LayerStats) for s in stats)
    np.testing.assert_array_equal(stats[0].num_valid, [6, 4])  # 2x3 and 2x2 feature tokens
    np.testing.assert_array_equal(stats[0].num_clusters, np.full((2, 4), 2))
    np.testing.assert_allclose(stats[1].prototype_ratio(), [2 / 6, 2 / 4])
    assert cluster_ratios(out) == [round((2 / 6 + 2 / 4) / 2, 4)] * 2


def test_flops_counter(run):
    from detr_jax.flops import count_flops
    cfg, _, _, _, out = run
    exact = count_flops(cfg, (64, 96), valid_hw=(64, 64))
    toy = count_flops(cfg, (64, 96), valid_hw=(64, 64), attention="even_odd",
                      encoder_stats=out["encoder_stats"])
    n, d = toy["valid_tokens"], cfg.hidden_dim
    assert toy["encoder_attention_products"] == 2 * (2 * 2 * n * d)
    assert toy["hashing_and_clustering"] == 2 * n * d
    assert toy["encoder_attention_projections"] == exact["encoder_attention_projections"]
    assert toy["attention"] == "even_odd"
    with pytest.raises(ValueError, match="encoder_stats"):
        count_flops(cfg, (64, 96), attention="even_odd")


def test_cluster_maps_of_the_plots(run):
    from detr_jax.evaluation.plots import cluster_assignments
    _, model, pixels, mask, _ = run
    ids, feature_hw = cluster_assignments(model, pixels, mask, jax.random.key(1))
    assert feature_hw == (2, 3) and len(ids) == 2
    expected = np.array([[0, 1, 0, 1, 0, 1], [0, 1, -1, 1, 0, -1]])  # image 1: column 2 padded
    for layer in ids:
        assert layer.shape == (2, 4, 6)
        np.testing.assert_array_equal(np.asarray(layer), np.repeat(expected[:, None], 4, axis=1))
