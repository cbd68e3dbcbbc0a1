"""Multi-task knowledge distillation (ACT paper, Section 3.3).

The exact transformer and ACT run on the same backbone features with the same
parameters. The loss is ``L = L_pred(Y, Y2) + kd_weight * L_KD(B1, stop_gradient(B2))``:
the detector's set loss (DETR's; the focal recipe's for Conditional and Anchor DETR) of the
exact branch's predictions Y2 against the ground truth Y, plus an
L2 distillation of ACT's predicted boxes B1 toward the exact branch's boxes B2. Only boxes
are distilled (the paper found the regression branch the sensitive one). The exact branch
gets no gradient from the KD term; ACT's gradient reaches every shared parameter, so one
model learns to work under both attentions and can switch at inference.

Distance (``box_distillation``): per query, the squared Euclidean distance between the two
(cx, cy, w, h) boxes (``kd_distance="squared"``, the default) or the distance itself
(``"l2"``, the paper's "L2 norm" read literally); reduced by the mean over images and
queries (``kd_normalize="queries"``, the default) or, like DETR's box losses, by the sum
over images and queries divided by the number of target boxes (``"boxes"``). The paper
does not say which; on the demo model the default term stayed near 0.01 against a DETR
loss near 8 (docs/training.md). ``kd_queries="matched"`` distils only the queries that
the exact branch's Hungarian matching assigns to a target box (with ``"queries"`` the
mean is over those queries): the exact branch's no-object queries have boxes no loss
constrains, and pulling ACT's toward them fought the detection loss when training the
demo model.
With ``kd_aux`` the auxiliary decoder layers add theirs (each with its own matching).
``act_loss`` optionally adds DETR's set loss of the ACT branch as well (not in the paper;
off by default). The metric ``kd_share`` is the weighted KD term's share of the total loss.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.training.losses import Criterion, LossFn, detr_criterion


KD_DISTANCES = ("squared", "l2")
KD_NORMALIZE = ("queries", "boxes")
KD_QUERIES = ("all", "matched")


@dataclasses.dataclass(frozen=True)
class MTKDConfig:
    act: str = "act:L=32"       # the student attention (any clustered setting string)
    kd_weight: float = 1.0      # weight of the box distillation term
    kd_aux: bool = False        # also distil the auxiliary decoder layers' boxes
    act_loss: bool = False      # also add the set loss of the ACT branch (not in the paper)
    kd_distance: str = "squared"  # per query: "squared" ||a - e||^2 or "l2" ||a - e||
    kd_normalize: str = "queries"  # "queries": mean over (B, Q); "boxes": sum / target boxes
    kd_queries: str = "all"     # "all" queries, or those "matched" to a target by the exact branch

    def __post_init__(self):
        if self.kd_distance not in KD_DISTANCES:
            raise ValueError(f"mtkd.kd_distance={self.kd_distance!r}; choose one of {KD_DISTANCES}")
        if self.kd_normalize not in KD_NORMALIZE:
            raise ValueError(f"mtkd.kd_normalize={self.kd_normalize!r}; choose one of {KD_NORMALIZE}")
        if self.kd_queries not in KD_QUERIES:
            raise ValueError(f"mtkd.kd_queries={self.kd_queries!r}; choose one of {KD_QUERIES}")

    @classmethod
    def from_config(cls, cfg) -> "MTKDConfig | None":
        """From a config's ``mtkd`` section (None when absent or ``enabled`` is False)."""
        if cfg is None or not cfg.get("enabled", False):
            return None
        return cls(act=cfg.get("act", cls.act), kd_weight=float(cfg.get("kd_weight", cls.kd_weight)),
                   kd_aux=bool(cfg.get("kd_aux", cls.kd_aux)),
                   act_loss=bool(cfg.get("act_loss", cls.act_loss)),
                   kd_distance=str(cfg.get("kd_distance", cls.kd_distance)),
                   kd_normalize=str(cfg.get("kd_normalize", cls.kd_normalize)),
                   kd_queries=str(cfg.get("kd_queries", cls.kd_queries)))


def box_distillation(student_boxes: jax.Array, teacher_boxes: jax.Array, *,
                     distance: str = "squared", num_boxes: jax.Array | None = None,
                     query_weights: jax.Array | None = None) -> jax.Array:
    """Distillation of (B, Q, 4) student boxes toward ``stop_gradient(teacher)``.

    Per query ``||student - teacher||^2`` (``distance="squared"``) or ``||student -
    teacher||`` (``"l2"``; its gradient is 0, not NaN, where the boxes coincide), times
    ``query_weights`` (B, Q) when given. The mean over (B, Q) (over the weighted queries
    when weighted) when ``num_boxes`` is None, else the sum divided by ``num_boxes``.
    """
    teacher = jax.lax.stop_gradient(teacher_boxes.astype(jnp.float32))
    squared = jnp.sum((student_boxes.astype(jnp.float32) - teacher) ** 2, axis=-1)
    if distance == "l2":
        per_query = jnp.sqrt(jnp.where(squared > 0, squared, 1.0)) * (squared > 0)
    elif distance == "squared":
        per_query = squared
    else:
        raise ValueError(f"distance={distance!r}; choose one of {KD_DISTANCES}")
    if query_weights is not None:
        query_weights = query_weights.astype(jnp.float32)
        per_query = per_query * query_weights
        if num_boxes is None:
            return jnp.sum(per_query) / jnp.maximum(jnp.sum(query_weights), 1.0)
    if num_boxes is None:
        return jnp.mean(per_query)
    return jnp.sum(per_query) / num_boxes


def matched_query_mask(query: jax.Array, valid: jax.Array, num_queries: int) -> jax.Array:
    """(B, Q) 1.0 for the queries matched to a valid target; ``query`` (B, T) per target."""
    batch = jnp.arange(query.shape[0])[:, None]
    mask = jnp.zeros((query.shape[0], num_queries), jnp.float32)
    return mask.at[batch, query].max(valid.astype(jnp.float32))


def mtkd_loss(exact_out: dict, act_out: dict, targets: dict, criterion: Criterion,
              config: MTKDConfig, assign: Callable | None = None):
    """(total, metrics) of one MTKD step from both branches' prediction dicts.
    ``criterion``: the detector's set criterion (``Detector.default_criterion``; DETR's
    :func:`~detr_jax.training.losses.detr_criterion`, the focal recipe's for Conditional
    and Anchor DETR): the exact branch's prediction loss and its matches."""
    loss_exact, metrics, matches = criterion(exact_out, targets, assign, return_matches=True)
    pairs = [(act_out, exact_out)]
    if config.kd_aux:
        pairs += list(zip(act_out.get("aux_outputs", []), exact_out.get("aux_outputs", [])))
    num_boxes = None
    if config.kd_normalize == "boxes":  # as DETR's box losses: over all target boxes
        num_boxes = jnp.maximum(targets["valid"].sum(), 1).astype(jnp.float32)
    if config.kd_queries == "matched" and matches.shape[0] < len(pairs):
        raise ValueError("mtkd.kd_queries='matched' with kd_aux needs the auxiliary losses "
                         "(loss.aux=True): the auxiliary layers are matched only then")
    kd = 0.0
    for index, (a, e) in enumerate(pairs):
        mask = None
        if config.kd_queries == "matched":  # layer order of pairs = order of the matches
            mask = matched_query_mask(jax.lax.stop_gradient(matches[index]), targets["valid"],
                                      e["pred_boxes"].shape[1])
        kd = kd + box_distillation(a["pred_boxes"], e["pred_boxes"], distance=config.kd_distance,
                                   num_boxes=num_boxes, query_weights=mask)
    total = loss_exact + config.kd_weight * kd
    metrics = dict(metrics, loss_exact=loss_exact, loss_kd=kd)
    if config.act_loss:
        loss_act, _ = criterion(act_out, targets, assign)
        total = total + loss_act
        metrics["loss_act"] = loss_act
    metrics["loss"] = total
    # The distillation term's share of the loss (weighted KD / total, in [0, 1]): how much
    # of the objective distils (docs/training.md); logged with the other metrics.
    metrics["kd_share"] = jax.lax.stop_gradient(
        config.kd_weight * kd / jnp.maximum(total, jnp.finfo(jnp.float32).tiny))
    return total, metrics


def mtkd_forward(exact_model, act_model, pixel_values, padding_mask, *, rng, train=True):
    """Both branches on one backbone pass -> (exact outputs, ACT outputs).

    ``exact_model`` and ``act_model`` hold the same parameters (``with_encoder_attention``)
    and differ only in encoder attention. Both get the same encoder and decoder keys.
    """
    enc_rng, dec_rng = jax.random.split(rng)
    features, mask, pos = exact_model.backbone_features(pixel_values, padding_mask)
    outputs = []
    for model in (exact_model, act_model):
        memory, stats = model.encode(features, mask, pos, rng=enc_rng, train=train)
        out = model.decode(memory, mask, pos, rng=dec_rng, train=train)
        out["encoder_stats"] = stats
        outputs.append(out)
    return outputs[0], outputs[1]


def mtkd_loss_fn(model, config: MTKDConfig, criterion: Criterion | None = None) -> LossFn:
    """The MTKD training loss as a :data:`detr_jax.training.losses.LossFn`.

    ``criterion``: the prediction loss of the exact branch (and of the ACT branch with
    ``act_loss``), the detector's ``default_criterion`` (the training CLI passes it for the
    config's ``loss`` section); None: DETR's with default weights.

    ``model`` is the exact model the trainer trains; the ACT branch is the same model
    behind ``config.act`` (its graph is built here once; inside the loss it is merged with
    the exact model's current state, so both branches share every parameter).
    """
    from detr_jax.attention import parse_attention
    from detr_jax.models.build import with_encoder_attention
    student_graphdef = nnx.graphdef(with_encoder_attention(model, parse_attention(config.act)))
    criterion = detr_criterion() if criterion is None else criterion

    def loss_fn(exact_model, pixel_values, padding_mask, targets, *, rng, assign):
        student = nnx.merge(student_graphdef, nnx.state(exact_model))
        exact_out, act_out = mtkd_forward(exact_model, student, pixel_values, padding_mask,
                                          rng=rng, train=True)
        return mtkd_loss(exact_out, act_out, targets, criterion, config, assign)
    return loss_fn
