"""Box conversions and (generalized) IoU, batched over leading dimensions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """(..., 4) centre-size boxes -> corner boxes."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_generalized_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """GIoU of every pair: a (..., N, 4), b (..., M, 4) xyxy -> (..., N, M)."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    return generalized_iou(a, b)


def generalized_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Element-wise GIoU of broadcastable xyxy boxes (Rezatofighi et al. 2019)."""
    area_a, area_b = _area(a), _area(b)
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    iou = inter / union
    lt_c = jnp.minimum(a[..., :2], b[..., :2])
    rb_c = jnp.maximum(a[..., 2:], b[..., 2:])
    wh_c = jnp.clip(rb_c - lt_c, 0)
    enclosing = wh_c[..., 0] * wh_c[..., 1]
    return iou - (enclosing - union) / enclosing
