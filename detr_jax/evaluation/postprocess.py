"""Post-processing of detector outputs into scores, labels and absolute xyxy boxes.

``postprocess_arrays`` is DETR's official PostProcess (softmax over classes, no NMS);
``DETR.postprocess`` calls it. The public :func:`postprocess` uses the post-processing of
the detector passed as ``model`` (each detector defines its own, for example top-k over
sigmoid scores), and DETR's when no model is given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.boxes import cxcywh_to_xyxy as box_cxcywh_to_xyxy


@jax.jit
def postprocess_arrays(pred_logits: jax.Array, pred_boxes: jax.Array, original_sizes: jax.Array):
    """(B, Q, K+1) logits, (B, Q, 4) cxcywh boxes, (B, 2) (height, width) ->
    scores (B, Q), labels (B, Q) (class index = COCO category id for COCO models), boxes
    (B, Q, 4) xyxy in original pixels."""
    probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)[..., :-1]
    scores = probs.max(-1)
    labels = probs.argmax(-1)
    h, w = original_sizes[:, 0].astype(jnp.float32), original_sizes[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]
    return scores, labels, box_cxcywh_to_xyxy(pred_boxes.astype(jnp.float32)) * scale


def postprocess(outputs, original_sizes, *, model=None) -> list[dict[str, np.ndarray]]:
    """Per image ``{"scores": (Q,), "labels": (Q,), "boxes": (Q, 4)}`` as numpy arrays.

    outputs: the detector's output dict; original_sizes: (B, 2) (height, width).
    model: the detector that produced ``outputs`` (its ``postprocess`` is used); None means
    DETR's softmax post-processing.
    """
    sizes = jnp.asarray(original_sizes)
    if model is None:
        scores, labels, boxes = postprocess_arrays(outputs["pred_logits"], outputs["pred_boxes"],
                                                   sizes)
    else:
        scores, labels, boxes = model.postprocess(outputs, sizes)
    scores, labels, boxes = map(np.asarray, (scores, labels, boxes))
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
