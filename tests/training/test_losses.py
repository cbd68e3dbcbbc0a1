import numpy as np
import jax.numpy as jnp

import pytest

from detr_jax.training.losses import LossWeights, layer_losses, set_criterion
from detr_jax.training.matcher import hungarian_match, match


def targets(labels, boxes, valid):
    return {"labels": jnp.array(labels), "boxes": jnp.array(boxes, jnp.float32), "valid": jnp.array(valid)}


def matched_losses(logits, boxes, t, w, solver="scipy"):
    query = match(logits, boxes, t["labels"], t["boxes"], t["valid"], solver=solver)
    return layer_losses(logits, boxes, t, query, w)


def test_hand_computed_single_match():
    # 2 queries, classes {0, 1} + no-object (2); one target of class 1 at the box of query 1
    logits = jnp.log(jnp.array([[[0.2, 0.2, 0.6], [0.1, 0.7, 0.2]]]))
    boxes = jnp.array([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.2]]])
    t = targets([[1, 0]], [[[0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]]], [[True, False]])
    out = matched_losses(logits, boxes, t, LossWeights())
    # query 1 matched to class 1 (weight 1), query 0 -> no-object (weight 0.1)
    ce = (-np.log(0.7) * 1.0 + -np.log(0.6) * 0.1) / 1.1
    np.testing.assert_allclose(out["loss_ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(out["loss_bbox"], 0.2, rtol=1e-5)  # |0.4-0.2|, one box
    # pred [0.3,0.4,0.7,0.6] vs target [0.4,0.4,0.6,0.6]: IoU 0.04/0.08 = 0.5, enclosing = union
    np.testing.assert_allclose(out["loss_giou"], 0.5, rtol=1e-5)


def test_no_targets_gives_only_no_object_loss():
    logits = jnp.log(jnp.array([[[0.3, 0.2, 0.5], [0.25, 0.25, 0.5]]]))
    t = targets([[0]], [[[0.5, 0.5, 0.1, 0.1]]], [[False]])
    out = matched_losses(logits, jnp.full((1, 2, 4), 0.5), t, LossWeights())
    np.testing.assert_allclose(out["loss_ce"], -np.log(0.5), rtol=1e-5)
    assert float(out["loss_bbox"]) == 0.0 and float(out["loss_giou"]) == 0.0


@pytest.mark.parametrize("solver", ["scipy", "optax"])
def test_aux_layers_add_their_terms(solver):
    rng = np.random.default_rng(0)
    layer = lambda: {"pred_logits": jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32),
                     "pred_boxes": jnp.asarray(rng.uniform(0.2, 0.5, (2, 5, 4)), jnp.float32)}
    outputs = layer()
    outputs["aux_outputs"] = [layer(), layer()]
    t = targets([[1, 2], [0, 0]], rng.uniform(0.3, 0.5, (2, 2, 4)), [[True, True], [True, False]])
    w = LossWeights()
    assign = lambda cost: hungarian_match(cost, solver)
    total, metrics = set_criterion(outputs, t, w, assign)
    expected = 0.0
    for o in [outputs] + outputs["aux_outputs"]:
        terms = matched_losses(o["pred_logits"], o["pred_boxes"], t, w, solver)
        expected += terms["loss_ce"] + 5 * terms["loss_bbox"] + 2 * terms["loss_giou"]
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    no_aux, _ = set_criterion(outputs, t, LossWeights(aux=False))
    assert float(no_aux) < float(total)
