"""Clusters from hashes, cluster means (prototypes) and broadcast back, with segment ops.

Rows are independent clustering problems (one per image and head). Within a row, tokens
with equal combined hash form a cluster; clusters are numbered 0, 1, ... in increasing
hash order (as signed 64-bit values). Padding tokens join no
cluster: their id is ``NO_CLUSTER`` (-1), they add nothing to any mean and use up no
capacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NO_CLUSTER = -1


def sorted_clusters(hi: jax.Array, lo: jax.Array, valid: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sort each row by hash and number its clusters in that order.

    Args:
      hi, lo: (R, N) uint32 words of 64-bit hashes (see ``e2lsh.combine_rounds``).
      valid: (R, N) bool, False on padding.
    Returns:
      perm: (R, N) int32, the token at each sorted position (valid tokens first, then by
        signed 64-bit hash, so each cluster's members are contiguous);
      sorted_ids: (R, N) int32 cluster id at each sorted position, ``NO_CLUSTER`` on padding;
      starts: (R, N) bool, True at each cluster's first sorted position.
    """
    rows, n = hi.shape
    padding = (~valid).astype(jnp.int32)
    signed_hi = jax.lax.bitcast_convert_type(hi, jnp.int32)
    order = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n))
    # Valid tokens first, then by (hi signed, lo unsigned) = signed int64 order.
    pad_s, hi_s, lo_s, perm = jax.lax.sort((padding, signed_hi, lo, order), dimension=1,
                                           num_keys=3)
    changed = (hi_s[:, 1:] != hi_s[:, :-1]) | (lo_s[:, 1:] != lo_s[:, :-1])
    starts = jnp.concatenate([jnp.ones((rows, 1), bool), changed], axis=1) & (pad_s == 0)
    sorted_ids = jnp.cumsum(starts.astype(jnp.int32), axis=1) - 1
    sorted_ids = jnp.where(pad_s == 0, sorted_ids, NO_CLUSTER)
    return perm, sorted_ids, starts


def cluster_ids(hi: jax.Array, lo: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Number the distinct hashes of each row.

    Args:
      hi, lo: (R, N) uint32 words of 64-bit hashes (see ``e2lsh.combine_rounds``).
      valid: (R, N) bool, False on padding.
    Returns:
      ids: (R, N) int32 cluster id in ``[0, num_clusters)`` for valid tokens, ``NO_CLUSTER``
        for padding; clusters are numbered in increasing signed 64-bit hash order (the
        partition, not the numbering, is what matches the official code).
      num_clusters: (R,) int32 number of distinct hashes among the valid tokens.
    """
    rows, n = hi.shape
    perm, sorted_ids, starts = sorted_clusters(hi, lo, valid)
    ids = jnp.zeros((rows, n), jnp.int32).at[jnp.arange(rows)[:, None], perm].set(sorted_ids)
    return ids, starts.sum(axis=1, dtype=jnp.int32)


def _flat_segments(ids: jax.Array, capacity: int) -> jax.Array:
    """Row-local ids (R, N) -> global segment ids of ``R * capacity`` segments; ids outside
    ``[0, capacity)`` go to the out-of-range segment ``R * capacity`` (dropped)."""
    rows = ids.shape[0]
    inside = (ids >= 0) & (ids < capacity)
    flat = jnp.arange(rows, dtype=jnp.int32)[:, None] * capacity + ids
    return jnp.where(inside, flat, rows * capacity).reshape(-1)


def cluster_sums(x: jax.Array, ids: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Per-cluster sums and sizes.

    Args:
      x: (R, N, D) values; ids: (R, N) int32 cluster ids (negative: no cluster).
      capacity: static number of cluster slots per row.
    Returns:
      sums (R, capacity, D) in float32 and counts (R, capacity) int32.
    """
    rows, n, d = x.shape
    segments = _flat_segments(ids, capacity)
    sums = jax.ops.segment_sum(x.reshape(rows * n, d).astype(jnp.float32), segments,
                               num_segments=rows * capacity)
    counts = jax.ops.segment_sum(jnp.ones((rows * n,), jnp.int32), segments,
                                 num_segments=rows * capacity)
    return sums.reshape(rows, capacity, d), counts.reshape(rows, capacity)


def cluster_means(x: jax.Array, ids: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Prototypes: the mean of each cluster's members.

    Args:
      x: (R, N, D); ids: (R, N) int32 (negative: no cluster); capacity: static slots.
    Returns:
      means (R, capacity, D) in ``x.dtype`` (zero for empty slots) and counts
      (R, capacity) int32.
    """
    sums, counts = cluster_sums(x, ids, capacity)
    means = sums / jnp.maximum(counts, 1)[..., None].astype(jnp.float32)
    return means.astype(x.dtype), counts


def broadcast_to_members(values: jax.Array, ids: jax.Array) -> jax.Array:
    """Give each token its cluster's row: ``out[r, n] = values[r, ids[r, n]]``.

    Args:
      values: (R, C, D) per-cluster values; ids: (R, N) int32.
    Returns:
      (R, N, D). Tokens without a cluster (negative ids) get slot 0's value.
    """
    safe = jnp.clip(ids, 0, values.shape[1] - 1)
    return jnp.take_along_axis(values, safe[..., None], axis=1)


def to_rows(x: jax.Array) -> jax.Array:
    """(B, N, H, D) per-head tensor -> (B * H, N, D) rows."""
    b, n, h, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * h, n, d)


def from_rows(x: jax.Array, batch: int) -> jax.Array:
    """(B * H, N, D) rows -> (B, N, H, D)."""
    rows, n, d = x.shape
    return x.reshape(batch, rows // batch, n, d).transpose(0, 2, 1, 3)


def row_valid(key_padding_mask: jax.Array | None, batch: int, num_heads: int, n: int
              ) -> jax.Array:
    """(B, N) padding mask (True on padding, or None) -> (B * H, N) bool, True on valid."""
    if key_padding_mask is None:
        return jnp.ones((batch * num_heads, n), bool)
    valid = ~key_padding_mask.astype(bool)
    return jnp.broadcast_to(valid[:, None, :], (batch, num_heads, n)).reshape(batch * num_heads, n)
