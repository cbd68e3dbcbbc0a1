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
import numpy as np

NO_CLUSTER = -1


# Sort keys of padded tokens: the largest (signed hi, unsigned lo) pair, so padding sorts last.
_PAD_HI = np.int32(np.iinfo(np.int32).max)
_PAD_LO = np.uint32(np.iinfo(np.uint32).max)


def sorted_clusters(hi: jax.Array, lo: jax.Array, valid: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sort each row by hash and number its clusters in that order.

    Padded tokens take the largest hash as their sort key, so one sort of three operands
    (key words and token index) does it. A valid token whose hash is that largest value
    shares the last run of the sorted row with the padding; the padding still gets no
    cluster, and a run of padding alone is not counted.

    Args:
      hi, lo: (R, N) uint32 words of 64-bit hashes (see ``e2lsh.combine_rounds``).
      valid: (R, N) bool, False on padding.
    Returns:
      perm: (R, N) int32, the token at each sorted position (by signed 64-bit hash, so
        each cluster's members are contiguous; padding last, except as said above);
      sorted_ids: (R, N) int32 cluster id at each sorted position, ``NO_CLUSTER`` on padding;
      starts: (R, N) bool, True at the first sorted position of each run of equal keys.
    """
    rows, n = hi.shape
    key_hi = jnp.where(valid, jax.lax.bitcast_convert_type(hi, jnp.int32), _PAD_HI)
    key_lo = jnp.where(valid, lo, _PAD_LO)
    order = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n))
    # (hi signed, lo unsigned) = signed int64 order
    hi_s, lo_s, perm = jax.lax.sort((key_hi, key_lo, order), dimension=1, num_keys=2,
                                    is_stable=False)
    changed = (hi_s[:, 1:] != hi_s[:, :-1]) | (lo_s[:, 1:] != lo_s[:, :-1])
    starts = jnp.concatenate([jnp.ones((rows, 1), bool), changed], axis=1)
    run = jnp.cumsum(starts.astype(jnp.int32), axis=1) - 1
    valid_s = jnp.take_along_axis(valid, perm, axis=1, mode="promise_in_bounds")
    return perm, jnp.where(valid_s, run, NO_CLUSTER), starts


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
    perm, sorted_ids, _ = sorted_clusters(hi, lo, valid)
    ids = jnp.zeros((rows, n), jnp.int32).at[jnp.arange(rows)[:, None], perm].set(
        sorted_ids, unique_indices=True, mode="promise_in_bounds")
    # valid tokens' runs are numbered 0, 1, ... in sorted order: the last one is the count
    return ids, jnp.max(sorted_ids, axis=1) + 1


# Hash-table numbering (``table_cluster_ids``): rounds of probing and the table size as a
# multiple of the token count (rounded up to a power of two).
TABLE_ROUNDS = 4
TABLE_FACTOR = 4
_ROUND_SEEDS = (0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1, 0xD3A2646C,
                0xFD7046C5, 0xB55A4F09)


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection of uint32 that mixes every input bit."""
    x = x ^ (x >> jnp.uint32(16))
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> jnp.uint32(13))
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> jnp.uint32(16))


def _table_slot(hi: jax.Array, lo: jax.Array, round_index: int, bits: int) -> jax.Array:
    """Slot in ``[0, 2**bits)`` of 64-bit hashes (hi, lo) for one probing round (int32)."""
    seed = jnp.uint32(_ROUND_SEEDS[round_index % len(_ROUND_SEEDS)])
    mixed = _fmix32(_fmix32(lo ^ seed) + hi * jnp.uint32(2 * round_index + 0x9E3779B1 | 1))
    return (mixed >> jnp.uint32(32 - bits)).astype(jnp.int32)


def table_bits(n: int, rounds: int = TABLE_ROUNDS, factor: int = TABLE_FACTOR) -> int:
    """log2 of the table size for ``n`` tokens (``factor * n`` rounded up to a power of 2),
    after checking that the table and the round-tagged entries fit int32."""
    bits = max(1, int(factor * n - 1).bit_length())
    if bits > 31:
        raise ValueError(f"table numbering: {n} tokens need a table of 2**{bits} slots")
    if rounds * (n + 1) >= 2**31:
        raise ValueError(f"table numbering: {rounds} rounds of {n} tokens overflow int32")
    return bits


def table_cluster_ids(hi: jax.Array, lo: jax.Array, valid: jax.Array, *,
                      rounds: int = TABLE_ROUNDS, factor: int = TABLE_FACTOR
                      ) -> tuple[jax.Array, jax.Array]:
    """Number the distinct hashes of each row with a hash table instead of a sort.

    Each row's distinct hash gets as representative its first (lowest-index) token, found
    by rounds of open addressing: every unresolved token writes its index into its hash's
    slot (a new slot function each round) of a table of ``factor * N`` slots (rounded up
    to a power of two), the lowest index winning, and reads the slot back; the tokens
    whose hash equals the slot winner's hash are resolved (a slot's winner always
    resolves, so each round resolves at least the lowest token of every slot). A hash's tokens share every slot, so a group is resolved
    whole or not at all and its representative is its lowest token. Clusters are then
    numbered by representative index (a cumulative sum), i.e. in order of first
    occurrence: the numbering is a function of the partition alone.

    After ``rounds`` rounds any still unresolved token becomes a cluster of its own: a
    cluster can be split, never merged. With every token distinct (the worst case) at
    DETR-DC5 size (N = 3800, 16384 slots), 10.7% of the hashes were unresolved after round
    1 and 0.12% after round 2 (64 random rows); each further round multiplies the share by
    about load * share / 2, so about 2e-7 remain after round 3 and 4e-15 after round 4: a
    split is expected less than once in 10**9 layers of 30,400 hashes (docs/act.md).

    Args:
      hi, lo: (R, N) uint32 words of 64-bit hashes (see ``e2lsh.combine_rounds``).
      valid: (R, N) bool, False on padding.
      rounds: probing rounds; factor: table slots per token.
    Returns:
      ids (R, N) int32 in ``[0, num_clusters)`` for valid tokens, ``NO_CLUSTER`` for
      padding, numbered in order of first occurrence; num_clusters (R,) int32.
    """
    rows, n = hi.shape
    bits = table_bits(n, rounds, factor)
    row = jnp.arange(rows, dtype=jnp.int32)[:, None]
    token = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n))
    rep = token  # unresolved tokens end as their own representative
    pending = valid
    # One table for all rounds: round r writes r * (n + 1) + (n - token) with an atomic
    # maximum, so this round's entries beat earlier rounds' and, within the round, the
    # lowest token wins; a pending token always finds this round's entry in its slot.
    table = jnp.full((rows, 1 << bits), -1, jnp.int32)
    for r in range(rounds):
        slot = _table_slot(hi, lo, r, bits)
        entry = jnp.where(pending, r * (n + 1) + (n - token), -1)
        table = table.at[row, slot].max(entry, mode="promise_in_bounds")
        winner = jnp.clip(n - table[row, slot] % (n + 1), 0, n - 1)
        same = (pending & (jnp.take_along_axis(hi, winner, axis=1) == hi)
                & (jnp.take_along_axis(lo, winner, axis=1) == lo))
        rep = jnp.where(same, winner, rep)
        pending = pending & ~same
    first = valid & (rep == token)
    number = jnp.cumsum(first.astype(jnp.int32), axis=1) - 1
    ids = jnp.where(valid, jnp.take_along_axis(number, rep, axis=1), NO_CLUSTER)
    return ids, first.sum(axis=1, dtype=jnp.int32)


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
    return jnp.take_along_axis(values, safe[..., None], axis=1, mode="promise_in_bounds")


def head_cluster_sums(x: jax.Array, ids: jax.Array, capacity: int, *, sizes: bool = True
                      ) -> tuple[jax.Array, jax.Array | None]:
    """Per-cluster sums (and sizes) in the per-head layout, without transposing ``x``.

    Args:
      x: (B, N, H, D) per-head vectors; ids: (B * H, N) int32 row cluster ids (negative:
        no cluster); capacity: static number of cluster slots per (image, head);
      sizes: also count each cluster's members (a second scatter-add).
    Returns:
      sums (B, capacity, H, D) float32 (zero in empty slots) and sizes (B, H, capacity)
      float32, or None without ``sizes``.
    """
    b, n, h, d = x.shape
    head_ids = ids.reshape(b, h, n).transpose(0, 2, 1)  # (B, N, H), small next to x
    inside = (head_ids >= 0) & (head_ids < capacity)
    segments = ((jnp.arange(b, dtype=jnp.int32)[:, None, None] * capacity + head_ids) * h
                + jnp.arange(h, dtype=jnp.int32))
    segments = jnp.where(inside, segments, b * capacity * h).reshape(-1)
    sums = jax.ops.segment_sum(x.reshape(b * n * h, d).astype(jnp.float32), segments,
                               num_segments=b * capacity * h).reshape(b, capacity, h, d)
    if not sizes:
        return sums, None
    counts = jax.ops.segment_sum(jnp.ones((b * n * h,), jnp.float32), segments,
                                 num_segments=b * capacity * h)
    return sums, counts.reshape(b, capacity, h).transpose(0, 2, 1)


def head_cluster_means(x: jax.Array, ids: jax.Array, capacity: int) -> jax.Array:
    """Prototypes in the per-head layout: (B, capacity, H, D) cluster means in
    ``x.dtype`` (zero in empty slots), the same values as
    ``from_rows(cluster_means(to_rows(x), ids, capacity)[0], B)``; x (B, N, H, D), ids
    (B * H, N) as ``head_cluster_sums``."""
    sums, sizes = head_cluster_sums(x, ids, capacity)
    means = sums / jnp.maximum(sizes, 1.0).transpose(0, 2, 1)[..., None]
    return means.astype(x.dtype)


def head_broadcast(values: jax.Array, ids: jax.Array) -> jax.Array:
    """Give each token its cluster's value in the per-head layout.

    Args:
      values: (B, C, H, D) per-cluster values; ids: (B * H, N) int32 row cluster ids.
    Returns:
      (B, N, H, D), ``out[b, n, h] = values[b, ids[b * H + h, n], h]``; tokens without a
      cluster get slot 0's value (as ``broadcast_to_members``).
    """
    b, c, h, _ = values.shape
    head_ids = jnp.clip(ids.reshape(b, h, -1).transpose(0, 2, 1), 0, c - 1)  # (B, N, H)
    return jnp.take_along_axis(values, head_ids[..., None], axis=1, mode="promise_in_bounds")


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
