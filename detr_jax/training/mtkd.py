"""Multi-task knowledge distillation (ACT paper, Section 3.3).

The exact transformer and ACT run on the same backbone features with the same
parameters. The loss is ``L = L_pred(Y, Y2) + kd_weight * L_KD(B1, stop_gradient(B2))``:
DETR's set loss of the exact branch's predictions Y2 against the ground truth Y, plus an
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
loss near 8 (docs/training.md). With ``kd_aux`` the auxiliary decoder layers add theirs.
``act_loss`` optionally adds DETR's set loss of the ACT branch as well (not in the paper;
off by default).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from detr_jax.training.losses import LossWeights, set_criterion


KD_DISTANCES = ("squared", "l2")
KD_NORMALIZE = ("queries", "boxes")


@dataclasses.dataclass(frozen=True)
class MTKDConfig:
    act: str = "act:L=32"       # the student attention (any clustered setting string)
    kd_weight: float = 1.0      # weight of the box distillation term
    kd_aux: bool = False        # also distil the auxiliary decoder layers' boxes
    act_loss: bool = False      # also add the set loss of the ACT branch (not in the paper)
    kd_distance: str = "squared"  # per query: "squared" ||a - e||^2 or "l2" ||a - e||
    kd_normalize: str = "queries"  # "queries": mean over (B, Q); "boxes": sum / target boxes

    def __post_init__(self):
        if self.kd_distance not in KD_DISTANCES:
            raise ValueError(f"mtkd.kd_distance={self.kd_distance!r}; choose one of {KD_DISTANCES}")
        if self.kd_normalize not in KD_NORMALIZE:
            raise ValueError(f"mtkd.kd_normalize={self.kd_normalize!r}; choose one of {KD_NORMALIZE}")

    @classmethod
    def from_config(cls, cfg) -> "MTKDConfig | None":
        """From a config's ``mtkd`` section (None when absent or ``enabled`` is False)."""
        if cfg is None or not cfg.get("enabled", False):
            return None
        return cls(act=cfg.get("act", cls.act), kd_weight=float(cfg.get("kd_weight", cls.kd_weight)),
                   kd_aux=bool(cfg.get("kd_aux", cls.kd_aux)),
                   act_loss=bool(cfg.get("act_loss", cls.act_loss)),
                   kd_distance=str(cfg.get("kd_distance", cls.kd_distance)),
                   kd_normalize=str(cfg.get("kd_normalize", cls.kd_normalize)))


def box_distillation(student_boxes: jax.Array, teacher_boxes: jax.Array, *,
                     distance: str = "squared", num_boxes: jax.Array | None = None) -> jax.Array:
    """Distillation of (B, Q, 4) student boxes toward ``stop_gradient(teacher)``.

    Per query ``||student - teacher||^2`` (``distance="squared"``) or ``||student -
    teacher||`` (``"l2"``; its gradient is 0, not NaN, where the boxes coincide). The mean
    over (B, Q) when ``num_boxes`` is None, else the sum divided by ``num_boxes``.
    """
    teacher = jax.lax.stop_gradient(teacher_boxes.astype(jnp.float32))
    squared = jnp.sum((student_boxes.astype(jnp.float32) - teacher) ** 2, axis=-1)
    if distance == "l2":
        per_query = jnp.sqrt(jnp.where(squared > 0, squared, 1.0)) * (squared > 0)
    elif distance == "squared":
        per_query = squared
    else:
        raise ValueError(f"distance={distance!r}; choose one of {KD_DISTANCES}")
    if num_boxes is None:
        return jnp.mean(per_query)
    return jnp.sum(per_query) / num_boxes


def mtkd_loss(exact_out: dict, act_out: dict, targets: dict, weights: LossWeights,
              config: MTKDConfig, assign: Callable | None = None):
    """(total, metrics) of one MTKD step from both branches' prediction dicts."""
    loss_exact, metrics = set_criterion(exact_out, targets, weights, assign)
    pairs = [(act_out, exact_out)]
    if config.kd_aux:
        pairs += list(zip(act_out.get("aux_outputs", []), exact_out.get("aux_outputs", [])))
    num_boxes = None
    if config.kd_normalize == "boxes":  # as DETR's box losses: over all target boxes
        num_boxes = jnp.maximum(targets["valid"].sum(), 1).astype(jnp.float32)
    kd = sum(box_distillation(a["pred_boxes"], e["pred_boxes"], distance=config.kd_distance,
                              num_boxes=num_boxes) for a, e in pairs)
    total = loss_exact + config.kd_weight * kd
    metrics = dict(metrics, loss_exact=loss_exact, loss_kd=kd)
    if config.act_loss:
        loss_act, _ = set_criterion(act_out, targets, weights, assign)
        total = total + loss_act
        metrics["loss_act"] = loss_act
    metrics["loss"] = total
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
