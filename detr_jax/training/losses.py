"""DETR's set criterion: cross-entropy (no-object weight), L1 and GIoU on matched boxes.

Losses are computed over the global batch (under ``jax.jit`` with a sharded batch this
is the sum over all devices and hosts): the box losses are divided by the total number
of real target boxes (at least 1), the classification loss is the no-object-weighted
mean over all queries, and every decoder layer (final and auxiliary) adds its own terms.

The trainer takes its loss as a function (``Trainer(..., loss_fn=...)``) with the signature
of :data:`LossFn`; :func:`detr_loss` is DETR's, ``detr_jax.training.mtkd.mtkd_loss_fn``
the multi-task distillation one (built on a detector's :data:`Criterion`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from detr_jax.boxes import cxcywh_to_xyxy, generalized_iou
from detr_jax.training.matcher import hungarian_match, matching_cost


LossFn = Callable[..., tuple]
"""``loss_fn(model, pixel_values, padding_mask, targets, *, rng, assign) -> (loss, metrics)``.

model: the detector merged from the trainer's current parameters; pixel_values (B, H, W, 3)
normalized; padding_mask (B, H, W) bool; targets: ``labels`` (B, T) int, ``boxes`` (B, T, 4)
cxcywh relative, ``valid`` (B, T) bool; rng: the step's PRNG key (train mode, dropout on);
assign: the Hungarian assignment of (D, B, Q, T) costs -> (D, B, T) query per target.
Returns the scalar loss to differentiate and a dict of scalar metrics (with ``loss``).
"""

Criterion = Callable[..., tuple]
"""``criterion(outputs, targets, assign=None, *, return_matches=False) -> (loss, metrics)``
(and the (D, B, T) matched queries, final layer first, with ``return_matches``): a
detector's set loss of its prediction dict, as ``Detector.default_criterion`` returns it
(DETR: :func:`detr_criterion`; Conditional and Anchor DETR: the focal recipe's). MTKD
(``detr_jax.training.mtkd``) builds on it, so distillation works for every detector.
"""


@dataclasses.dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    eos_coef: float = 0.1  # weight of the no-object class in cross-entropy
    aux: bool = True


def layer_losses(pred_logits, pred_boxes, targets, query, weights: LossWeights) -> dict:
    """Unweighted loss terms of one decoder layer's predictions given its matching.

    pred_logits (B, Q, K+1) (last = no-object), pred_boxes (B, Q, 4); targets dict with
    ``labels`` (B, T), ``boxes`` (B, T, 4), ``valid`` (B, T); query (B, T) the query
    matched to each target.
    """
    labels, boxes, valid = targets["labels"], targets["boxes"], targets["valid"]
    num_classes = pred_logits.shape[-1] - 1
    batch = jnp.arange(labels.shape[0])[:, None]
    target_classes = jnp.full(pred_logits.shape[:2], num_classes, jnp.int32)
    target_classes = target_classes.at[batch, query].set(jnp.where(valid, labels, num_classes))
    ce = optax.softmax_cross_entropy_with_integer_labels(pred_logits.astype(jnp.float32), target_classes)
    class_weight = jnp.where(target_classes == num_classes, weights.eos_coef, 1.0)
    loss_ce = (ce * class_weight).sum() / class_weight.sum()

    matched = pred_boxes[batch, query].astype(jnp.float32)  # (B, T, 4)
    num_boxes = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    l1 = jnp.where(valid[..., None], jnp.abs(matched - boxes), 0.0).sum() / num_boxes
    giou = generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(boxes))
    loss_giou = jnp.where(valid, 1.0 - giou, 0.0).sum() / num_boxes
    return {"loss_ce": loss_ce, "loss_bbox": l1, "loss_giou": loss_giou}


def decoder_layers(outputs: dict, aux: bool = True):
    """Stacked (final first, then auxiliary) logits (D, B, Q, K+1) and boxes (D, B, Q, 4)."""
    layers = [outputs] + (list(outputs.get("aux_outputs", [])) if aux else [])
    return (jnp.stack([layer["pred_logits"] for layer in layers]),
            jnp.stack([layer["pred_boxes"] for layer in layers]))


def match_layers(logits, boxes, targets, weights: LossWeights,
                 assign: Callable | None = None) -> jax.Array:
    """Hungarian matching of every decoder layer at once: (D, B, T) query per target.

    ``assign`` maps a (D, B, Q, T) cost to (D, B, T) assignments; the default solves on
    device with optax (see ``matcher.hungarian_match``).
    """
    cost = jax.vmap(lambda lg, bx: matching_cost(
        lg, bx, targets["labels"], targets["boxes"], targets["valid"], class_weight=weights.ce,
        bbox_weight=weights.bbox, giou_weight=weights.giou))(logits, boxes)
    return (assign or hungarian_match)(cost)


def set_criterion(outputs: dict, targets: dict, weights: LossWeights = LossWeights(),
                  assign: Callable | None = None, *, return_matches: bool = False):
    """Total weighted loss over the final and auxiliary decoder outputs, and its parts.

    All decoder layers are matched in one call of ``assign`` (one host round trip with
    the scipy solver, one batched while loop with optax). Returns (loss, metrics) where
    metrics holds the final layer's unweighted terms and the total; with
    ``return_matches`` also the (D, B, T) query matched to each target, final layer first.
    """
    logits, boxes = decoder_layers(outputs, weights.aux)
    query = match_layers(logits, boxes, targets, weights, assign)
    terms = jax.vmap(lambda lg, bx, q: layer_losses(lg, bx, targets, q, weights))(logits, boxes, query)
    weighted = weights.ce * terms["loss_ce"] + weights.bbox * terms["loss_bbox"] + weights.giou * terms["loss_giou"]
    metrics = {k: v[0] for k, v in terms.items()}
    metrics["loss"] = weighted.sum()
    if return_matches:
        return metrics["loss"], metrics, query
    return metrics["loss"], metrics


def detr_criterion(weights: LossWeights = LossWeights()) -> Criterion:
    """DETR's set criterion as a :data:`Criterion` (``set_criterion`` with ``weights``)."""
    def criterion(outputs, targets, assign=None, *, return_matches=False):
        return set_criterion(outputs, targets, weights, assign, return_matches=return_matches)
    return criterion


def detr_loss(weights: LossWeights = LossWeights()) -> LossFn:
    """DETR's training loss as a :data:`LossFn`: the model in train mode, then
    :func:`set_criterion` of its outputs."""
    def loss_fn(model, pixel_values, padding_mask, targets, *, rng, assign):
        outputs = model(pixel_values, padding_mask, rng=rng, train=True)
        return set_criterion(outputs, targets, weights, assign)
    return loss_fn
