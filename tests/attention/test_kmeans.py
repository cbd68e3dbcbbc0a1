"""K-means clustered attention: Lloyd steps in Hamming space, limits, stats, strings, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention import KMeansAttention, parse_attention
from detr_jax.attention.clustering import to_rows
from detr_jax.attention.kmeans import (assign, assign_packed, hamming_codes, initial_centroids,
                                      kmeans_ids, majority_centroids, pack_codes)
from tests.attention.clustered_cases import build_attention, exact_attention, relative_error


def test_string_and_spec():
    spec = parse_attention("kmeans:C=100")
    assert spec == detr_jax.KMeans(clusters=100)
    assert spec.to_string() == "kmeans:C=100,iterations=10,bits=32"
    assert parse_attention("kmeans:C=7,iterations=3,bits=20,seed=2") == detr_jax.KMeans(7, 3, 20, 2)
    assert isinstance(build_attention(spec), KMeansAttention)


def test_lloyd_steps_on_a_hand_example():
    # codes of 6 tokens (+-1, 4 bits): two obvious groups, last token padding
    codes = jnp.asarray([[[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, 1],
                          [-1, -1, -1, -1], [-1, -1, -1, 1], [1, 1, 1, 1]]], jnp.float32)
    valid = jnp.asarray([[True] * 5 + [False]])
    init = initial_centroids(codes, valid, 2)  # valid ranks 0 and 2 (of 5)
    np.testing.assert_array_equal(init[0], codes[0, jnp.asarray([0, 2])])
    ids = kmeans_ids(codes, valid, 2, iterations=3)
    np.testing.assert_array_equal(ids, [[0, 0, 0, 1, 1, -1]])
    centroids = majority_centroids(codes, ids, init, 2)
    np.testing.assert_array_equal(centroids[0], [[1, 1, 1, 1], [-1, -1, -1, -1]])  # ties -> -1
    # an empty cluster keeps its previous centroid
    kept = majority_centroids(codes, jnp.zeros((1, 6), jnp.int32), init, 2)
    np.testing.assert_array_equal(kept[0, 1], init[0, 1])
    np.testing.assert_array_equal(assign(codes, centroids, valid), ids)


@pytest.mark.parametrize("bits", [4, 32, 45])
def test_packed_assignment_equals_the_float_product(bits):
    rng = np.random.default_rng(bits)
    codes = jnp.asarray(rng.choice([-1.0, 1.0], (3, 40, bits)).astype(np.float32))
    # centroids copied from tokens and duplicated: exact ties must go to the lowest index
    centroids = jnp.concatenate([codes[:, :5], codes[:, :5]], axis=1)
    valid = jnp.asarray(rng.random((3, 40)) > 0.2)
    words = pack_codes(codes)
    assert words.shape == (3, 40, -(-bits // 32)) and words.dtype == jnp.uint32
    expected = assign(codes, centroids, valid)
    np.testing.assert_array_equal(assign_packed(words, pack_codes(centroids), valid), expected)
    assert int(expected.max()) < 5 and int(expected.min()) == -1
    # bit j of word j // 32 is code j
    bit = (np.asarray(words)[..., 0] >> 3) & 1
    np.testing.assert_array_equal(bit, np.asarray(codes[..., 3] > 0))


def test_limits_one_cluster_and_one_per_token_are_exact():
    rng = np.random.default_rng(0)
    k, v = (jnp.asarray(rng.normal(0, 1, (1, 24, 2, 8)).astype(np.float32)) for _ in range(2))
    same = jnp.broadcast_to(jnp.asarray(rng.normal(0, 1, (1, 1, 2, 8)).astype(np.float32)),
                            (1, 24, 2, 8))
    out, stats = build_attention(detr_jax.KMeans(clusters=5)).attend(same, k, v, None, None)
    np.testing.assert_array_equal(stats.num_clusters, [[1, 1]])
    assert relative_error(out, exact_attention(same, k, v)) < 1e-5
    distinct = jnp.asarray(rng.normal(0, 3, (1, 24, 2, 8)).astype(np.float32))
    spec = detr_jax.KMeans(clusters=24, bits=64)  # every token seeds its own centroid
    out, stats = build_attention(spec).attend(distinct, k, v, None, None)
    np.testing.assert_array_equal(stats.num_clusters, [[24, 24]])
    assert relative_error(out, exact_attention(distinct, k, v)) < 1e-5


def test_stats_capacity_and_single_compile():
    module = build_attention(detr_jax.KMeans(clusters=6, iterations=4, bits=16))
    traces = []

    @nnx.jit
    def attend(module, q, k, v, mask, rng):
        traces.append(1)
        return module.attend(q, k, v, mask, rng)

    rng = np.random.default_rng(1)
    for seed in range(3):
        q, k, v = (jnp.asarray(rng.normal(0, 1, (2, 40, 2, 8)).astype(np.float32))
                   for _ in range(3))
        mask = jnp.zeros((2, 40), bool).at[1, 30 - 10 * seed:].set(True)
        out, stats = attend(module, q, k, v, mask, jax.random.key(seed))
        assert stats.num_clusters.dtype == jnp.int32 and stats.num_clusters.shape == (2, 2)
        assert np.all(np.asarray(stats.num_clusters) <= 6) and int(stats.capacity) == 6
        np.testing.assert_array_equal(stats.num_valid, [40, 30 - 10 * seed])
        assert np.all(np.isfinite(out))
    assert len(traces) == 1


def test_same_seed_same_result():
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(0, 1, (1, 40, 2, 8)).astype(np.float32)) for _ in range(3))
    spec = detr_jax.KMeans(clusters=5, seed=1)
    first = build_attention(spec).attend(q, k, v, None, None)[0]
    np.testing.assert_array_equal(first, build_attention(spec).attend(q, k, v, None, None)[0])
    other = build_attention(detr_jax.KMeans(clusters=5, seed=2)).attend(q, k, v, None, None)[0]
    assert not np.array_equal(first, other)


def test_hashes_the_unscaled_queries():
    """As fast-transformers: the codes come from q W_q^T + b_q, not from the queries scaled
    by Dh ** -0.5 for the softmax, so the clusters do not depend on the temperature."""
    heads, head_dim, n = 2, 16, 48
    spec = detr_jax.KMeans(clusters=6, iterations=5, bits=32)
    layer = spec.build(heads * head_dim, heads, layer_index=2, num_layers=6, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(3).normal(0, 1, (1, n, heads * head_dim)), jnp.float32)
    mask = jnp.zeros((1, n), bool).at[0, 40:].set(True)
    key = jax.random.key(7)
    ids = np.asarray(layer.assignments(x, x, x, mask, key))  # (1, H, N)
    raw = layer.split_heads(layer.q_proj(x))  # unscaled per-head queries (1, N, H, Dh)
    valid = jnp.repeat(~mask, heads, axis=0)  # (H, N) rows of image 0
    planes, offsets = layer.hash_params(key)
    expected = kmeans_ids(hamming_codes(to_rows(raw), planes, offsets), valid, 6, 5)
    np.testing.assert_array_equal(ids.reshape(heads, n), expected)
    assert np.all(ids[0, :, 40:] == -1)
    # The scaled queries give other clusters here, so the check above can fail.
    scaled = kmeans_ids(hamming_codes(to_rows(raw) * head_dim ** -0.5, planes, offsets),
                        valid, 6, 5)
    assert np.mean(np.asarray(scaled) != np.asarray(expected)) > 0.1
    # attend clusters the same way: prototypes are means over these clusters.
    out, stats = layer.attend(*layer.project(x, x, x), mask, key)
    np.testing.assert_array_equal(stats.num_clusters[0],
                                  [len(set(expected[h][:40].tolist())) for h in range(heads)])


@pytest.mark.parametrize("bad", ["kmeans:C=0", "kmeans:bits=x", "kmeans:K=3"])
def test_bad_strings(bad):
    with pytest.raises(ValueError, match="kmeans\\[:C="):
        parse_attention(bad)
