"""The focal-loss set criterion of Conditional DETR and Anchor DETR (their official recipe).

Both detectors classify with ``num_classes`` independent sigmoids (no no-object column).
Per decoder layer (final and auxiliary):

- matching: Hungarian on ``cost_class * focal_cost + cost_bbox * L1 - cost_giou * GIoU``
  (2 / 5 / 2), the focal class cost in the official form
  ``alpha (1-p)^gamma (-log(p+1e-8)) - (1-alpha) p^gamma (-log(1-p+1e-8))`` at each
  target's class;
- loss: ``ce * focal + bbox * L1 + giou * (1 - GIoU)`` (2 / 5 / 2), the sigmoid focal loss
  (alpha 0.25, gamma 2) summed over queries x classes (a matched query's target is its
  object's class, every other entry 0) and, as the box terms, divided by the number of
  real target boxes (at least 1).

Targets as in :mod:`detr_jax.training.losses`: ``labels`` (B, T) int (class index < C),
``boxes`` (B, T, 4) cxcywh relative, ``valid`` (B, T) bool.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from detr_jax.boxes import cxcywh_to_xyxy, generalized_iou
from detr_jax.training.losses import Criterion, LossFn, decoder_layers
from detr_jax.training.matcher import hungarian_match, matching_cost


@dataclasses.dataclass(frozen=True)
class FocalWeights:
    """Loss weights (``ce``, ``bbox``, ``giou``), matcher cost weights (``cost_*``), the
    focal ``alpha`` (< 0: no alpha weighting) and ``gamma``, and whether auxiliary decoder
    layers add their terms. Defaults: the official recipe of both detectors."""
    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0
    aux: bool = True

    @classmethod
    def from_config(cls, loss_cfg) -> "FocalWeights":
        """From a ``loss`` config section (ConfigDict or dict); ValueError on unknown fields."""
        values = loss_cfg.to_dict() if hasattr(loss_cfg, "to_dict") else dict(loss_cfg)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"loss fields {unknown} do not apply to the focal loss; "
                             f"its fields are {sorted(known)} (use focal_loss_config)")
        return cls(**values)


def focal_loss_config(**overrides) -> ml_collections.ConfigDict:
    """The ``loss`` config section of the focal recipe (:class:`FocalWeights` fields)."""
    values = dataclasses.asdict(FocalWeights(**overrides))
    return ml_collections.ConfigDict(values)


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Element-wise sigmoid focal loss (Lin et al. 2017), as the official code computes it.

    logits, targets: same shape, targets in {0, 1} -> the loss of every element
    ``alpha_t * BCE(logits, targets) * (1 - p_t)^gamma`` (no alpha_t when alpha < 0).
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    prob = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return loss


def focal_class_cost(pred_logits, labels, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """The official focal class cost: (B, Q, C) sigmoid logits, (B, T) labels -> (B, Q, T)
    ``pos[label] - neg[label]`` with ``pos = alpha (1-p)^gamma (-log(p + 1e-8))`` and
    ``neg = (1-alpha) p^gamma (-log(1 - p + 1e-8))``."""
    prob = jax.nn.sigmoid(pred_logits.astype(jnp.float32))
    neg = (1.0 - alpha) * prob ** gamma * -jnp.log(1.0 - prob + 1e-8)
    pos = alpha * (1.0 - prob) ** gamma * -jnp.log(prob + 1e-8)
    index = jnp.broadcast_to(labels[:, None, :], prob.shape[:2] + labels.shape[1:])
    return jnp.take_along_axis(pos - neg, index, axis=-1)


def focal_layer_losses(pred_logits, pred_boxes, targets, query, weights: FocalWeights) -> dict:
    """Unweighted terms of one decoder layer given its matching.

    pred_logits (B, Q, C) sigmoid logits, pred_boxes (B, Q, 4), query (B, T) the query
    matched to each target -> ``loss_ce`` (focal, / boxes), ``loss_bbox``, ``loss_giou``.
    """
    labels, boxes, valid = targets["labels"], targets["boxes"], targets["valid"]
    num_classes = pred_logits.shape[-1]
    batch = jnp.arange(labels.shape[0])[:, None]
    target_classes = jnp.full(pred_logits.shape[:2], num_classes, jnp.int32)
    target_classes = target_classes.at[batch, query].set(jnp.where(valid, labels, num_classes))
    onehot = jax.nn.one_hot(target_classes, num_classes + 1)[..., :num_classes]  # (B, Q, C)
    num_boxes = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
    loss_ce = sigmoid_focal_loss(pred_logits, onehot, weights.alpha, weights.gamma).sum() / num_boxes

    matched = pred_boxes[batch, query].astype(jnp.float32)  # (B, T, 4)
    l1 = jnp.where(valid[..., None], jnp.abs(matched - boxes), 0.0).sum() / num_boxes
    giou = generalized_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(boxes))
    loss_giou = jnp.where(valid, 1.0 - giou, 0.0).sum() / num_boxes
    return {"loss_ce": loss_ce, "loss_bbox": l1, "loss_giou": loss_giou}


def focal_match_layers(logits, boxes, targets, weights: FocalWeights,
                       assign: Callable | None = None) -> jax.Array:
    """Hungarian matching of every decoder layer at once with the focal class cost:
    logits (D, B, Q, C), boxes (D, B, Q, 4) -> (D, B, T) query per target."""
    class_cost = functools.partial(focal_class_cost, alpha=weights.alpha, gamma=weights.gamma)
    cost = jax.vmap(lambda lg, bx: matching_cost(
        lg, bx, targets["labels"], targets["boxes"], targets["valid"],
        class_weight=weights.cost_class, bbox_weight=weights.cost_bbox,
        giou_weight=weights.cost_giou, class_cost=class_cost))(logits, boxes)
    return (assign or hungarian_match)(cost)


def focal_set_criterion(outputs: dict, targets: dict, weights: FocalWeights = FocalWeights(),
                        assign: Callable | None = None, *, return_matches: bool = False):
    """Total weighted focal-recipe loss over the final and auxiliary decoder outputs.

    Returns (loss, metrics): the final layer's unweighted terms and ``loss`` (the total);
    with ``return_matches`` also the (D, B, T) query matched to each target, final layer
    first.
    """
    logits, boxes = decoder_layers(outputs, weights.aux)
    query = focal_match_layers(logits, boxes, targets, weights, assign)
    terms = jax.vmap(lambda lg, bx, q: focal_layer_losses(lg, bx, targets, q, weights))(
        logits, boxes, query)
    weighted = (weights.ce * terms["loss_ce"] + weights.bbox * terms["loss_bbox"]
                + weights.giou * terms["loss_giou"])
    metrics = {k: v[0] for k, v in terms.items()}
    metrics["loss"] = weighted.sum()
    if return_matches:
        return metrics["loss"], metrics, query
    return metrics["loss"], metrics


def focal_criterion(weights: FocalWeights = FocalWeights()) -> Criterion:
    """The focal recipe's set criterion as a :data:`detr_jax.training.losses.Criterion`."""
    def criterion(outputs, targets, assign=None, *, return_matches=False):
        return focal_set_criterion(outputs, targets, weights, assign,
                                   return_matches=return_matches)
    return criterion


def focal_detr_loss(weights: FocalWeights = FocalWeights()) -> LossFn:
    """The focal recipe as a :data:`detr_jax.training.losses.LossFn`: the model in train
    mode, then :func:`focal_set_criterion` of its outputs."""
    def loss_fn(model, pixel_values, padding_mask, targets, *, rng, assign):
        outputs = model(pixel_values, padding_mask, rng=rng, train=True)
        return focal_set_criterion(outputs, targets, weights, assign)
    return loss_fn
