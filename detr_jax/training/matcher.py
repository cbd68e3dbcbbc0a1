"""Hungarian matching of predictions to targets with the official DETR costs, on device.

Targets are padded to a static count T per image: ``labels`` (B, T) int32, ``boxes``
(B, T, 4) cx-cy-w-h in [0, 1], ``valid`` (B, T) bool. Padded targets get a constant
cost (0) in every row, which leaves the optimal matching of the real targets unchanged
as long as Q >= T (they take whatever rows remain).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax import assignment

from detr_jax.boxes import cxcywh_to_xyxy, pairwise_generalized_iou


def matching_cost(pred_logits, pred_boxes, labels, boxes, valid, *, class_weight=1.0,
                  bbox_weight=5.0, giou_weight=2.0) -> jax.Array:
    """(B, Q, T) cost: ``-class_weight * p[label] + bbox_weight * L1 - giou_weight * GIoU``."""
    prob = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)
    cost_class = -jnp.take_along_axis(prob, jnp.broadcast_to(
        labels[:, None, :], prob.shape[:2] + labels.shape[1:]), axis=-1)
    cost_bbox = jnp.abs(pred_boxes[:, :, None, :] - boxes[:, None, :, :]).sum(-1)
    cost_giou = -pairwise_generalized_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(boxes))
    cost = bbox_weight * cost_bbox + class_weight * cost_class + giou_weight * cost_giou
    return jnp.where(valid[:, None, :], cost, 0.0)


def hungarian_match(cost: jax.Array) -> jax.Array:
    """Optimal assignment per image: cost (B, Q, T), Q >= T -> query index of each target (B, T)."""
    if cost.shape[1] < cost.shape[2]:
        raise ValueError(f"more targets ({cost.shape[2]}) than queries ({cost.shape[1]})")

    def one(c):
        rows, cols = assignment.hungarian_algorithm(c)
        return jnp.zeros((c.shape[1],), jnp.int32).at[cols].set(rows.astype(jnp.int32))

    return jax.vmap(one)(jax.lax.stop_gradient(cost))


def match(pred_logits, pred_boxes, labels, boxes, valid, **weights) -> jax.Array:
    """Query index assigned to each target, (B, T)."""
    return hungarian_match(matching_cost(pred_logits, pred_boxes, labels, boxes, valid, **weights))
