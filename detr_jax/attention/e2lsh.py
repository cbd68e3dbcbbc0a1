"""E2LSH hashing (Datar et al. 2004) as ACT uses it, with exact 64-bit wrapping combination.

One round hashes a vector ``x`` to ``h_i(x) = floor((a_i . x + b_i) / r)`` (``a_i ~ N(0, I)``,
``b_i`` a random offset). ACT combines ``L`` rounds as ``sum_i h_i * 4**i`` (``B = 4``), which the
official code evaluates as ``sum_i h_i << 2i`` in wrapping int64 arithmetic.

JAX runs here without 64-bit types, so the combined hash is carried as two uint32 words
``(hi, lo)`` holding the same 64 bits: every term ``h_i * 4**i mod 2**64`` is formed by
shifting the sign-extended ``h_i`` across the two words, and the terms are added with an
explicit carry from ``lo`` into ``hi``. The result equals the int64 value modulo ``2**64``
bit for bit (``hi`` read as signed int32 and ``lo`` as uint32 give the int64 order).

Combining is a ring homomorphism from the integers to ``Z / 2**64``, so subtracting a
per-row constant from each round (the official code subtracts each round's minimum) only
adds a row constant to every combined hash and leaves the partition unchanged; it is
therefore not done here. See docs/act.md for the collisions this combination allows.

Offsets: the ACT paper's text draws ``b ~ U(0, r)``; the released ACT code, which produced
the paper's tables, draws ``b ~ U[0, 1)`` (``torch.rand``) whatever ``r`` is.
``OFFSET_MODES`` names the two: ``"released"`` (the default) and ``"paper"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BASE_BITS = 2  # B = 4 = 2**2: round i is shifted left by 2 * i bits
MAX_ROUNDS = 32  # rounds 32.. would be shifted out of 64 bits entirely
OFFSET_MODES = ("released", "paper")


def offset_range(offsets: str, bucket_width: float) -> float:
    """Upper end of the offsets' uniform draw: 1 for ``"released"`` (``U[0, 1)``, the
    released ACT code), ``bucket_width`` for ``"paper"`` (``U(0, r)``, the paper's text)."""
    if offsets not in OFFSET_MODES:
        raise ValueError(f"offsets must be one of {OFFSET_MODES}, got {offsets!r}")
    return 1.0 if offsets == "released" else float(bucket_width)


def draw_hash_params(key: jax.Array, dim: int, rounds: int, bucket_width: float,
                     offsets: str = "released") -> tuple[jax.Array, jax.Array]:
    """Random E2LSH parameters: projections ``a`` (dim, rounds) ~ N(0, 1) and offsets ``b``
    (rounds,) ~ U[0, 1) (``offsets="released"``) or U[0, bucket_width) (``"paper"``),
    both float32."""
    key_a, key_b = jax.random.split(key)
    weights = jax.random.normal(key_a, (dim, rounds), jnp.float32)
    biases = jax.random.uniform(key_b, (rounds,), jnp.float32, 0.0,
                                offset_range(offsets, bucket_width))
    return weights, biases


def round_hashes(x: jax.Array, weights: jax.Array, biases: jax.Array, bucket_width: float,
                 layout: str = "...d->...l") -> jax.Array:
    """Per-round E2LSH buckets ``floor((x . a_i + b_i) / r)``.

    Args:
      x: (..., D) vectors (computed in float32).
      weights: (D, L) projections; biases: (L,) offsets; bucket_width: ``r``.
      layout: ``"<x axes>-><output axes>"`` with ``d`` the vector axis and ``l`` the
        rounds, e.g. ``"bnhd->bhnl"`` to produce per-head rows directly.
    Returns:
      (..., L) int32 bucket indices (in ``layout``'s output order).
    """
    inputs, output = layout.split("->")
    proj = jnp.einsum(f"{inputs},dl->{output}", x.astype(jnp.float32),
                      weights.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return jnp.floor((proj + biases.astype(jnp.float32)) / bucket_width).astype(jnp.int32)


def _shifted_words(h: jax.Array, shift: int) -> tuple[jax.Array, jax.Array]:
    """``h << shift`` modulo 2**64 for int32 ``h`` (sign-extended) as (hi, lo) uint32 words."""
    lo = jax.lax.bitcast_convert_type(h, jnp.uint32)
    hi = jnp.where(h < 0, jnp.uint32(0xFFFFFFFF), jnp.uint32(0))
    if shift == 0:
        return hi, lo
    if shift < 32:
        new_hi = (hi << jnp.uint32(shift)) | (lo >> jnp.uint32(32 - shift))
        return new_hi, lo << jnp.uint32(shift)
    if shift < 64:
        return lo << jnp.uint32(shift - 32), jnp.zeros_like(lo)
    zero = jnp.zeros_like(lo)
    return zero, zero


def add_words(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
    """Wrapping 64-bit addition of (hi, lo) uint32 word pairs."""
    lo = a[1] + b[1]
    carry = (lo < a[1]).astype(jnp.uint32)
    return a[0] + b[0] + carry, lo


def combine_rounds(hashes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``sum_i hashes[..., i] << 2i`` in wrapping 64-bit arithmetic.

    Args:
      hashes: (..., L) int32 per-round buckets, ``L <= 32``.
    Returns:
      ``(hi, lo)``: (...) uint32 words; ``hi * 2**32 + lo`` is the combined hash modulo
      ``2**64`` (the official int64 value, read as unsigned).
    """
    rounds = hashes.shape[-1]
    if rounds > MAX_ROUNDS:
        raise ValueError(f"{rounds} rounds do not fit a base-4 hash in 64 bits "
                         f"(at most {MAX_ROUNDS})")
    total = (jnp.zeros(hashes.shape[:-1], jnp.uint32), jnp.zeros(hashes.shape[:-1], jnp.uint32))
    for i in range(rounds):
        total = add_words(total, _shifted_words(hashes[..., i], BASE_BITS * i))
    return total


def words_to_int64(hi, lo):
    """NumPy helper for tests and debugging: (hi, lo) uint32 words -> int64 array."""
    import numpy as np
    value = (np.asarray(hi, np.uint64) << np.uint64(32)) | np.asarray(lo, np.uint64)
    return value.view(np.int64)
