"""Anchor DETR's position encodings: 1-D row/column positions from the padding mask and
sine embeddings of 1-D and 2-D positions (the official ``mask2pos``, ``pos2posemb1d``,
``pos2posemb2d``).

Naming follows the official code, where a "row" position is the x coordinate (the place
along a row, one per column of the map) and a "column" position the y coordinate.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def mask2pos(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalized centre positions of the valid rows and columns.

    mask: (B, h, w) bool, True on padding (bottom/right). Returns ``(y, x)``: y (B, h) from
    the first column of the mask, x (B, w) from its first row, each ``(cumsum - 0.5) / n``
    with n the number of valid rows (columns), so valid positions lie in (0, 1) and padded
    ones stay at ``(n - 0.5) / n``.
    """
    not_mask = ~mask
    y = jnp.cumsum(not_mask[:, :, 0].astype(jnp.float32), axis=1)
    x = jnp.cumsum(not_mask[:, 0, :].astype(jnp.float32), axis=1)
    return (y - 0.5) / y[:, -1:], (x - 0.5) / x[:, -1:]


def _inverse_frequencies(num_feats: int, temperature: float) -> jax.Array:
    """``temperature ** (2 * (i // 2) / num_feats)`` for i < num_feats, in float32."""
    exponent = (2 * (np.arange(num_feats, dtype=np.float32) // 2) / np.float32(num_feats))
    return jnp.asarray(np.float32(temperature) ** exponent.astype(np.float32))


def _sine(pos: jax.Array, num_feats: int, temperature: float) -> jax.Array:
    """pos (...) in [0, 1] -> (..., num_feats): sin on even channels, cos on odd ones, of
    ``2 pi pos / temperature ** (2 (i // 2) / num_feats)``."""
    scaled = (pos * np.float32(2 * math.pi))[..., None] / _inverse_frequencies(num_feats, temperature)
    stacked = jnp.stack([jnp.sin(scaled[..., 0::2]), jnp.cos(scaled[..., 1::2])], axis=-1)
    return stacked.reshape(*pos.shape, num_feats)


def pos2posemb1d(pos: jax.Array, num_feats: int = 256, temperature: float = 10000.0) -> jax.Array:
    """Sine embedding of 1-D positions: (...) -> (..., num_feats)."""
    return _sine(pos, num_feats, temperature)


def pos2posemb2d(pos: jax.Array, num_feats: int = 128, temperature: float = 10000.0) -> jax.Array:
    """Sine embedding of (x, y) points: (..., 2) -> (..., 2 * num_feats), channels
    ``[embed(y), embed(x)]`` as the official code orders them."""
    return jnp.concatenate([_sine(pos[..., 1], num_feats, temperature),
                            _sine(pos[..., 0], num_feats, temperature)], axis=-1)


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``log(x / (1 - x))`` with x clipped to [0, 1] and both terms to at least ``eps``."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))
