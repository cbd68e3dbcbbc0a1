"""Sine position embedding and padding-mask downsampling, as the official DETR."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch ``F.interpolate(mode="nearest")``: ``floor(i * in / out)``.

    torch computes the scale in float32 and clamps to ``in_size - 1``; so do we.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def downsample_mask(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Padding mask (B, H, W) to feature resolution (B, h, w) by nearest index.

    ``jax.image.resize(..., "nearest")`` samples pixel centres and gives a different
    answer; the official code takes row ``floor(i * H / h)``.
    """
    rows = nearest_indices(mask.shape[1], size[0])
    cols = nearest_indices(mask.shape[2], size[1])
    return mask[:, rows][:, :, cols]


def sine_position_embedding(mask: jax.Array, num_pos_feats: int = 128,
                            temperature: float = 10000.0, scale: float = 2 * math.pi,
                            eps: float = 1e-6) -> jax.Array:
    """DETR's normalized sine embedding. mask (B, h, w) True on padding -> (B, h, w, 2F).

    Channels are [pos_y (F), pos_x (F)], each interleaving sin (even) and cos (odd), with
    the not-padding cumulative sum divided by its last value and scaled to [0, 2 pi].
    """
    not_mask = (~mask).astype(jnp.float32)
    y_embed = jnp.cumsum(not_mask, axis=1)
    x_embed = jnp.cumsum(not_mask, axis=2)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    exponent = (2 * (np.arange(num_pos_feats) // 2) / num_pos_feats).astype(np.float32)
    dim_t = jnp.asarray(np.float32(temperature) ** exponent)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t

    def interleave(p):
        stacked = jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1)
        return stacked.reshape(*p.shape[:-1], num_pos_feats)

    return jnp.concatenate([interleave(pos_y), interleave(pos_x)], axis=-1)
