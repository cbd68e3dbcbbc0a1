"""K-means clustered attention: Lloyd steps in Hamming space, limits, stats, strings, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention import KMeansAttention, parse_attention
from detr_jax.attention.kmeans import assign, initial_centroids, kmeans_ids, majority_centroids
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


@pytest.mark.parametrize("bad", ["kmeans:C=0", "kmeans:bits=x", "kmeans:K=3"])
def test_bad_strings(bad):
    with pytest.raises(ValueError, match="kmeans\\[:C="):
        parse_attention(bad)
