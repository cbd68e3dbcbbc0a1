"""E2LSH rounds and the exact 64-bit wrapping combination, against NumPy int64 arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.attention.clustering import cluster_ids
from detr_jax.attention.e2lsh import combine_rounds, round_hashes, words_to_int64
from tests.attention.clustered_cases import build_attention


def numpy_wrapping_combination(hashes):
    """sum_i h_i << 2i in wrapping int64 (computed in uint64, where NumPy wraps silently)."""
    h = hashes.astype(np.int64).view(np.uint64)
    total = np.zeros(hashes.shape[:-1], np.uint64)
    for i in range(hashes.shape[-1]):
        total = total + (h[..., i] << np.uint64(2 * i))
    return total.view(np.int64)


def canonical(ids):
    """Relabel a partition by order of first occurrence (labels then compare as partitions)."""
    _, first, inverse = np.unique(np.asarray(ids), return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.reshape(-1)]


def official_partition(hashes):
    """The official clustering of one row: subtract each round's min, combine, number the
    distinct int64 values in sorted order. hashes (N, L) int -> ids (N,)."""
    shifted = hashes - hashes.min(axis=0, keepdims=True)
    combined = numpy_wrapping_combination(shifted)
    return np.unique(combined, return_inverse=True)[1].reshape(-1)


@pytest.mark.parametrize("rounds", [1, 7, 32])
def test_combination_equals_numpy_int64_wrap(rounds):
    rng = np.random.default_rng(rounds)
    hashes = rng.integers(-2**31, 2**31, (64, rounds), dtype=np.int64).astype(np.int32)
    hashes[:8] = rng.integers(-3, 4, (8, rounds))  # small values as well
    hashes[8] = 2**31 - 1  # every round at the int32 extremes: carries into the top word
    hashes[9] = -2**31
    hi, lo = combine_rounds(jnp.asarray(hashes))
    expected = numpy_wrapping_combination(hashes)
    np.testing.assert_array_equal(words_to_int64(hi, lo), expected)
    exact = [sum(int(h) << (2 * i) for i, h in enumerate(row)) for row in hashes]
    overflows = sum(not -2**63 <= e < 2**63 for e in exact)
    if rounds == 32:  # the sums overflow 64 bits, so wrapping is really exercised
        assert overflows > 32


def test_combination_rejects_more_than_32_rounds():
    with pytest.raises(ValueError, match="at most 32"):
        combine_rounds(jnp.zeros((3, 33), jnp.int32))


def test_partition_equals_official_with_min_subtraction_and_collisions():
    rng = np.random.default_rng(0)
    rows, n, rounds = 6, 300, 32
    # Wide bucket ranges (> 4 per round) so distinct cells do collide in the base-4 sum.
    hashes = rng.integers(-6, 7, (rows, n, rounds)).astype(np.int32)
    hashes[:, n // 2:] = hashes[:, :n // 2]  # guaranteed duplicates
    hashes[:, 10, 0] = hashes[:, 11, 0] + 4  # (h0 + 4, h1) and (h0, h1 + 1) collide
    hashes[:, 10, 1:] = hashes[:, 11, 1:]
    hashes[:, 10, 1] -= 1
    ids, counts = cluster_ids(*combine_rounds(jnp.asarray(hashes)), jnp.ones((rows, n), bool))
    for r in range(rows):
        expected = official_partition(hashes[r])
        np.testing.assert_array_equal(canonical(ids[r]), canonical(expected))
        assert int(counts[r]) == expected.max() + 1
        assert ids[r, 10] == ids[r, 11]


def test_round_hashes_floor_of_projection():
    x = jnp.asarray([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
    weights = jnp.asarray([[1.0, -1.0], [1.0, 2.0]])
    biases = jnp.asarray([0.5, 0.25])
    got = round_hashes(x, weights, biases, 2.0)
    expected = np.floor((np.asarray(x) @ np.asarray(weights) + np.asarray(biases)) / 2.0)
    np.testing.assert_array_equal(got, expected.astype(np.int32))


def test_hash_draws_are_seeded_per_layer():
    spec = detr_jax.ACT(rounds=8, bucket_width=2.0, seed=3)
    layer0, layer1 = build_attention(spec, layer_index=0), build_attention(spec, layer_index=1)
    a0, b0 = layer0.hash_params(None, "Q")
    again, _ = build_attention(spec, layer_index=0).hash_params(None, "Q")
    a1, _ = layer1.hash_params(None, "Q")
    np.testing.assert_array_equal(a0, again)  # rng=None: fixed seed, deterministic
    assert not np.allclose(a0, a1)  # fresh draw per layer
    assert a0.shape == (8, 8) and b0.shape == (8,)
    assert 0.0 <= float(b0.min()) and float(b0.max()) < 2.0  # b ~ U(0, r)
    key = jax.random.key(7)
    np.testing.assert_array_equal(layer0.hash_params(key, "Q")[0], layer0.hash_params(key, "Q")[0])
    assert not np.allclose(layer0.hash_params(key, "Q")[0], a0)
    assert not np.allclose(layer0.hash_params(None, "K")[0], a0)  # keys hashed independently
    other_seed = build_attention(detr_jax.ACT(rounds=8, bucket_width=2.0, seed=4))
    assert not np.allclose(other_seed.hash_params(None, "Q")[0], a0)


def test_same_seed_same_clusters():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(0, 1, (2, 40, 2, 8)).astype(np.float32))
    spec = detr_jax.ACT(rounds=16, bucket_width=1.0, seed=5)
    stats = [build_attention(spec).attend(q, q, q, None, None)[1] for _ in range(2)]
    np.testing.assert_array_equal(stats[0].num_clusters, stats[1].num_clusters)
    ids = [build_attention(spec).clusters(q, jnp.zeros((2, 40), bool), None, "Q")[0]
           for _ in range(2)]
    np.testing.assert_array_equal(ids[0], ids[1])
