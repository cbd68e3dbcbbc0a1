"""Hungarian matching of predictions to targets with the official DETR costs.

Targets are padded to a static count T per image: ``labels`` (B, T) int32, ``boxes``
(B, T, 4) cx-cy-w-h in [0, 1], ``valid`` (B, T) bool. Padded targets get a constant
cost (0) in every row, which leaves the optimal matching of the real targets unchanged
as long as Q >= T (they take whatever rows remain).

The solvers give the same optimum (scipy may break ties another way; the kernel's
assignment is optax's exactly):

- ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` on the host through one
  ``jax.pure_callback`` for all cost matrices of a step. Inside a sharded training step
  the trainer runs it under ``shard_map``, so every device sends only its own images to
  its own host (works on many hosts).
- ``"optax"``: ``optax.assignment.hungarian_algorithm``, on device (``lax.while_loop``s
  for all matrices, batched with vmap). On a GPU XLA copies every iteration's loop
  condition to the host and waits for it: hundreds of round trips per step.
- ``"kernel"``: the same algorithm as optax's, with the same result, as one Pallas/Triton
  GPU kernel, one program per matrix (``detr_jax.training.hungarian_kernel``): nothing
  leaves the GPU.
- ``"auto"`` (the training default): ``"kernel"`` on GPUs, ``"optax"`` elsewhere (TPU
  loops run on the chip, CPU loops on the host anyway).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from optax import assignment

from detr_jax.boxes import cxcywh_to_xyxy, pairwise_generalized_iou

SOLVERS = ("scipy", "optax", "kernel", "auto")


def resolve_solver(solver: str, platform: str | None = None) -> str:
    """``"auto"`` -> ``"kernel"`` on ``platform`` "gpu" (default: the first device's), else
    ``"optax"``; other names are checked and returned."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown matcher solver {solver!r}; choose one of {SOLVERS}")
    if solver != "auto":
        return solver
    platform = platform or jax.devices()[0].platform
    return "kernel" if platform == "gpu" else "optax"


def softmax_class_cost(pred_logits, labels) -> jax.Array:
    """DETR's class cost: (B, Q, K+1) logits, (B, T) labels -> (B, Q, T) ``-softmax(p)[label]``."""
    prob = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(prob, jnp.broadcast_to(
        labels[:, None, :], prob.shape[:2] + labels.shape[1:]), axis=-1)


def matching_cost(pred_logits, pred_boxes, labels, boxes, valid, *, class_weight=1.0,
                  bbox_weight=5.0, giou_weight=2.0, class_cost=softmax_class_cost) -> jax.Array:
    """(B, Q, T) cost: ``class_weight * class_cost + bbox_weight * L1 - giou_weight * GIoU``.

    ``class_cost(pred_logits, labels) -> (B, Q, T)``: DETR's ``-p[label]`` by default
    (:func:`softmax_class_cost`); the focal-loss detectors pass their own
    (``detr_jax.training.focal.focal_class_cost``).
    """
    cost_class = class_cost(pred_logits, labels)
    pred_boxes = pred_boxes.astype(jnp.float32)
    cost_bbox = jnp.abs(pred_boxes[:, :, None, :] - boxes[:, None, :, :]).sum(-1)
    cost_giou = -pairwise_generalized_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(boxes))
    cost = bbox_weight * cost_bbox + class_weight * cost_class + giou_weight * cost_giou
    return jnp.where(valid[:, None, :], cost, 0.0)


def _scipy_assign(cost: np.ndarray) -> np.ndarray:
    """Host side: cost (..., Q, T) -> query index of each target (..., T), int32."""
    from scipy.optimize import linear_sum_assignment
    # Non-finite costs (a diverged step, which the trainer skips) would make scipy raise.
    cost = np.nan_to_num(np.asarray(cost), nan=1e9, posinf=1e9, neginf=-1e9)
    flat = cost.reshape((-1,) + cost.shape[-2:])
    out = np.empty((flat.shape[0], cost.shape[-1]), np.int32)
    for i, c in enumerate(flat):
        rows, cols = linear_sum_assignment(c)
        out[i, cols] = rows
    return out.reshape(cost.shape[:-2] + (cost.shape[-1],))


def _optax_assign(cost: jax.Array) -> jax.Array:
    def one(c):
        rows, cols = assignment.hungarian_algorithm(c)
        return jnp.zeros((c.shape[1],), jnp.int32).at[cols].set(rows.astype(jnp.int32))

    flat = cost.reshape((-1,) + cost.shape[-2:])
    return jax.vmap(one)(flat).reshape(cost.shape[:-2] + (cost.shape[-1],))


def hungarian_match(cost: jax.Array, solver: str = "optax") -> jax.Array:
    """Optimal assignment per matrix: cost (..., Q, T), Q >= T -> query of each target (..., T)."""
    if cost.shape[-2] < cost.shape[-1]:
        raise ValueError(f"more targets ({cost.shape[-1]}) than queries ({cost.shape[-2]})")
    cost = jax.lax.stop_gradient(cost.astype(jnp.float32))
    solver = resolve_solver(solver)
    if solver == "kernel":
        from detr_jax.training.hungarian_kernel import kernel_assign
        # off GPUs (tests) through the Pallas interpreter
        return kernel_assign(cost, interpret=jax.devices()[0].platform != "gpu")
    if solver == "optax":
        return _optax_assign(cost)
    if solver == "scipy":
        shape = jax.ShapeDtypeStruct(cost.shape[:-2] + cost.shape[-1:], jnp.int32)
        return jax.pure_callback(_scipy_assign, shape, cost, vmap_method="broadcast_all")
    raise AssertionError(solver)


def match(pred_logits, pred_boxes, labels, boxes, valid, *, solver: str = "optax",
          **weights) -> jax.Array:
    """Query index assigned to each target, (B, T)."""
    return hungarian_match(matching_cost(pred_logits, pred_boxes, labels, boxes, valid, **weights),
                           solver)
