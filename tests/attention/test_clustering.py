"""Cluster numbering: the hash-table numbering against the sort numbering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.attention.clustering import NO_CLUSTER, cluster_ids, table_cluster_ids
from detr_jax.attention.registry import parse_attention
from tests.attention.clustered_cases import build_attention, padded_case
from tests.attention.test_e2lsh import canonical


def hash_rows(seed, rows, n, distinct, pad_from=None):
    """Random (hi, lo) words with ``distinct`` different hashes per row, and a valid mask
    (False from column ``pad_from`` on in odd rows)."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**32, (rows, distinct, 2), dtype=np.uint64).astype(np.uint32)
    pick = rng.integers(0, distinct, (rows, n))
    words = np.take_along_axis(pool, pick[..., None], axis=1)
    valid = np.ones((rows, n), bool)
    if pad_from is not None:
        valid[1::2, pad_from:] = False
    return jnp.asarray(words[..., 0]), jnp.asarray(words[..., 1]), jnp.asarray(valid)


def assert_same_partition(ids, expected, valid):
    for r in range(ids.shape[0]):
        keep = np.asarray(valid[r])
        np.testing.assert_array_equal(canonical(ids[r][keep]), canonical(expected[r][keep]))


@pytest.mark.parametrize("distinct", [1, 7, 300, 1000])
def test_table_numbering_equals_sort_numbering(distinct):
    hi, lo, valid = hash_rows(distinct, rows=6, n=1000, distinct=distinct, pad_from=700)
    ids, counts = jax.jit(table_cluster_ids)(hi, lo, valid)
    expected, expected_counts = cluster_ids(hi, lo, valid)
    np.testing.assert_array_equal(counts, expected_counts)
    assert_same_partition(ids, expected, valid)
    # Numbered by first occurrence: exactly the canonical labels of the partition.
    for r in range(6):
        keep = np.asarray(valid[r])
        np.testing.assert_array_equal(ids[r][keep], canonical(expected[r][keep]))


def test_padding_joins_no_cluster_and_uses_no_number():
    hi, lo, valid = hash_rows(1, rows=4, n=64, distinct=5, pad_from=10)
    # Give padded tokens the hash of a valid token: they must still stay out.
    hi, lo = hi.at[1, 20].set(hi[1, 0]), lo.at[1, 20].set(lo[1, 0])
    ids, counts = table_cluster_ids(hi, lo, valid)
    assert np.all(np.asarray(ids)[~np.asarray(valid)] == NO_CLUSTER)
    assert np.all(np.asarray(ids)[np.asarray(valid)] >= 0)
    for r in range(4):
        assert int(counts[r]) == len(np.unique(np.asarray(ids[r])[np.asarray(valid[r])]))


@pytest.mark.parametrize("numbering", [cluster_ids, table_cluster_ids])
def test_valid_tokens_with_the_padding_sort_key_keep_their_own_cluster(numbering):
    """The sort numbering gives padding the largest hash as its sort key; valid tokens
    with exactly that hash still form one cluster, padding joins none, and a run of
    padding alone is not counted."""
    hi, lo, valid = hash_rows(4, rows=3, n=40, distinct=6, pad_from=25)
    top_hi, top_lo = np.uint32(0x7FFFFFFF), np.uint32(0xFFFFFFFF)  # the largest signed int64
    hi, lo = np.array(hi), np.array(lo)
    hi[:2, [3, 30, 31]], lo[:2, [3, 30, 31]] = top_hi, top_lo  # row 1: 30, 31 are padding
    ids, counts = numbering(jnp.asarray(hi), jnp.asarray(lo), valid)
    ids, valid = np.asarray(ids), np.asarray(valid)
    for r in range(3):
        keys = (hi[r].astype(np.uint64) << np.uint64(32)) | lo[r]
        assert int(counts[r]) == len(np.unique(keys[valid[r]]))
        np.testing.assert_array_equal(canonical(ids[r][valid[r]]), canonical(keys[valid[r]]))
        assert np.all(ids[r][~valid[r]] == NO_CLUSTER)
    assert ids[0, 3] == ids[0, 30] == ids[0, 31] and ids[1, 3] >= 0


def test_crowded_table_still_exact_with_enough_rounds():
    # One slot per token and every token distinct: most slots collide in each round.
    hi, lo, valid = hash_rows(2, rows=3, n=512, distinct=4096)
    ids, counts = table_cluster_ids(hi, lo, valid, rounds=16, factor=1)
    expected, expected_counts = cluster_ids(hi, lo, valid)
    np.testing.assert_array_equal(counts, expected_counts)
    assert_same_partition(ids, expected, valid)


def test_too_few_rounds_split_clusters_but_never_merge_them():
    hi, lo, valid = hash_rows(3, rows=3, n=512, distinct=200)
    ids, counts = table_cluster_ids(hi, lo, valid, rounds=1, factor=1)
    expected, expected_counts = cluster_ids(hi, lo, valid)
    ids, expected = np.asarray(ids), np.asarray(expected)
    assert np.any(counts > expected_counts)  # one round of a crowded table leaves some
    for r in range(3):
        for cluster in np.unique(ids[r]):  # every table cluster lies inside one hash group
            assert len(np.unique(expected[r][ids[r] == cluster])) == 1
        assert int(counts[r]) == len(np.unique(ids[r]))


def test_act_with_table_numbering_matches_sort_numbering():
    spec = parse_attention("act:L=8,r=0.5,ids=table")
    assert spec == detr_jax.ACT(rounds=8, bucket_width=0.5, numbering="table")
    assert parse_attention(spec.to_string()) == spec
    with pytest.raises(ValueError, match="ids="):
        parse_attention("act:ids=radix")
    assert parse_attention("act:L=8").numbering == "auto"  # the default, left out
    assert parse_attention("act:L=8,ids=sort").to_string() == "act:L=8,r=8,ids=sort"
    q, k, v, mask, _ = padded_case(seed=4, distinct=(9, 4))
    outputs = []
    for numbering in ("sort", "table"):
        layer = build_attention(detr_jax.ACT(rounds=8, bucket_width=0.5, numbering=numbering))
        out, stats = layer.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                  jnp.asarray(mask), None)
        outputs.append((np.asarray(out), np.asarray(stats.num_clusters)))
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert outputs[0][1].max() < q.shape[1] // 2  # the case does cluster
    valid = ~np.asarray(mask)  # padded queries' outputs are unspecified
    np.testing.assert_allclose(outputs[0][0][valid], outputs[1][0][valid], rtol=1e-5, atol=1e-6)


def test_head_layout_means_and_broadcast_equal_the_row_layout():
    from detr_jax.attention.clustering import (broadcast_to_members, cluster_means, from_rows,
                                               head_broadcast, head_cluster_means, to_rows)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 50, 4, 8)).astype(np.float32))
    ids = jnp.asarray(rng.integers(-1, 24, (8, 50)).astype(np.int32))  # -1: padding
    np.testing.assert_allclose(head_cluster_means(x, ids, 20),  # ids >= 20 are dropped
                               from_rows(cluster_means(to_rows(x), ids, 20)[0], 2), rtol=1e-6)
    values = jnp.asarray(rng.normal(size=(2, 24, 4, 8)).astype(np.float32))
    np.testing.assert_array_equal(head_broadcast(values, ids),
                                  from_rows(broadcast_to_members(to_rows(values), ids), 2))
