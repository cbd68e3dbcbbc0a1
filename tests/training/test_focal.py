"""The focal recipe of Conditional and Anchor DETR: loss and matching cost against hand
computation, and a few training steps of tiny models of both detectors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.models.anchor_detr import AnchorDETR, tiny_anchor_detr_config
from detr_jax.models.build import build_model
from detr_jax.models.conditional_detr import ConditionalDETR, tiny_conditional_detr_config
from detr_jax.models.detr import DETR
from detr_jax.training.defaults import loss_config, train_config
from detr_jax.training.focal import (FocalWeights, focal_class_cost, focal_layer_losses,
                                     focal_loss_config, focal_set_criterion, sigmoid_focal_loss)
from detr_jax.training.matcher import hungarian_match, match
from detr_jax.training.trainer import Trainer


def targets(labels, boxes, valid):
    return {"labels": jnp.array(labels), "boxes": jnp.array(boxes, jnp.float32),
            "valid": jnp.array(valid)}


def test_sigmoid_focal_loss_hand_computed():
    # p = 0.5, target 1: alpha * BCE * (1 - p)^2 = 0.25 * log 2 * 0.25
    # p = 0.75, target 0: (1 - alpha) * -log(0.25) * 0.75^2
    out = sigmoid_focal_loss(jnp.array([0.0, np.log(3.0)]), jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(out, [0.25 * np.log(2) * 0.25, 0.75 * np.log(4) * 0.5625],
                               rtol=1e-6)
    no_alpha = sigmoid_focal_loss(jnp.array([0.0]), jnp.array([1.0]), alpha=-1.0, gamma=0.0)
    np.testing.assert_allclose(no_alpha, [np.log(2)], rtol=1e-6)  # plain BCE


def test_focal_layer_loss_sums_over_queries_and_classes_per_box():
    # 2 queries x 2 classes; one target of class 1 matched to query 1
    p = np.array([[[0.2, 0.3], [0.1, 0.8]]])
    logits = jnp.log(p / (1 - p))
    boxes = jnp.array([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.4, 0.2]]])
    t = targets([[1, 0]], [[[0.5, 0.5, 0.2, 0.2], [0, 0, 0, 0]]], [[True, False]])
    out = focal_layer_losses(logits, boxes, t, jnp.array([[1, 0]]), FocalWeights())

    def focal(prob, y):
        p_t = prob if y else 1 - prob
        return (0.25 if y else 0.75) * -np.log(p_t) * (1 - p_t) ** 2

    expected = focal(0.2, 0) + focal(0.3, 0) + focal(0.1, 0) + focal(0.8, 1)  # / 1 box
    np.testing.assert_allclose(out["loss_ce"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["loss_bbox"], 0.2, rtol=1e-5)
    np.testing.assert_allclose(out["loss_giou"], 0.5, rtol=1e-5)


def test_focal_class_cost_is_the_official_form_and_drives_the_matching():
    p = np.array([[[0.9, 0.05], [0.2, 0.6], [0.5, 0.5]]])  # (1, 3 queries, 2 classes)
    logits = jnp.log(p / (1 - p))
    labels = jnp.array([[1, 0]])
    cost = np.asarray(focal_class_cost(logits, labels))
    pos = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8)
    neg = 0.75 * p ** 2 * -np.log(1 - p + 1e-8)
    np.testing.assert_allclose(cost, (pos - neg)[:, :, [1, 0]], rtol=1e-4, atol=1e-6)
    # identical boxes: only the class cost decides -> class 1 to query 1, class 0 to query 0
    boxes = jnp.full((1, 3, 4), 0.5)
    t = targets(labels, np.full((1, 2, 4), 0.5), [[True, True]])
    query = match(logits, boxes, t["labels"], t["boxes"], t["valid"], solver="scipy",
                  class_weight=2.0, class_cost=focal_class_cost)
    assert query.tolist() == [[1, 0]]


@pytest.mark.parametrize("solver", ["scipy", "optax"])
def test_focal_criterion_adds_every_decoder_layer(solver):
    rng = np.random.default_rng(0)
    layer = lambda: {"pred_logits": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
                     "pred_boxes": jnp.asarray(rng.uniform(0.2, 0.5, (2, 5, 4)), jnp.float32)}
    outputs = layer()
    outputs["aux_outputs"] = [layer(), layer()]
    t = targets([[1, 2], [0, 0]], rng.uniform(0.3, 0.5, (2, 2, 4)), [[True, True], [True, False]])
    w = FocalWeights()
    total, metrics = focal_set_criterion(outputs, t, w, lambda c: hungarian_match(c, solver))
    expected = 0.0
    for o in [outputs] + outputs["aux_outputs"]:
        query = match(o["pred_logits"], o["pred_boxes"], t["labels"], t["boxes"], t["valid"],
                      solver=solver, class_weight=2.0, bbox_weight=5.0, giou_weight=2.0,
                      class_cost=focal_class_cost)
        terms = focal_layer_losses(o["pred_logits"], o["pred_boxes"], t, query, w)
        expected += 2 * terms["loss_ce"] + 5 * terms["loss_bbox"] + 2 * terms["loss_giou"]
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    no_aux, _ = focal_set_criterion(outputs, t, FocalWeights(aux=False))
    assert float(no_aux) < float(total)


def test_loss_config_checks_its_fields():
    assert FocalWeights.from_config(focal_loss_config(alpha=0.5)).alpha == 0.5
    with pytest.raises(ValueError, match="eos_coef"):
        FocalWeights.from_config(loss_config())


def test_each_detector_names_its_default_loss():
    # the training CLI calls ``model.default_loss(cfg.loss)``
    assert DETR.default_loss(loss_config()).__qualname__.startswith("detr_loss")
    for cls in (ConditionalDETR, AnchorDETR):
        assert cls.default_loss(focal_loss_config()).__qualname__.startswith("focal_detr_loss")


def fixed_batch(num_classes):
    """4 images of 64 x 64 (the tests' 4 CPU devices), the last two padded, 1-2 boxes each."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 64, 64, 3)).astype(np.uint8)
    mask = np.zeros((4, 64, 64), bool)
    mask[2:, :, 48:] = True
    box = lambda *b: list(b)
    none = box(0, 0, 0, 0)
    return {"pixel_values": images, "padding_mask": mask,
            "labels": np.array([[1, num_classes - 1], [2, 0], [3, 1], [0, 0]], np.int32),
            "boxes": np.array([[box(.3, .3, .2, .3), box(.7, .6, .3, .3)],
                               [box(.4, .5, .3, .4), none],
                               [box(.3, .6, .2, .2), box(.5, .3, .3, .2)],
                               [box(.5, .5, .4, .4), none]], np.float32),
            "valid": np.array([[True, True], [True, False], [True, True], [True, False]])}


@pytest.mark.parametrize("make_config", [tiny_conditional_detr_config, tiny_anchor_detr_config],
                         ids=["conditional", "anchor"])
def test_training_steps_reduce_the_loss_on_a_fixed_batch(make_config):
    cfg = make_config()
    model = build_model(cfg, seed=0)
    train_cfg = train_config(global_batch=4, lr=1e-3, lr_backbone=1e-4, lr_drop_epochs=(),
                             max_targets=2, frozen=())
    trainer = Trainer(model, train_cfg, loss_fn=model.default_loss(focal_loss_config()))
    batch = fixed_batch(cfg.num_classes)
    losses = [float(jax.device_get(trainer.step(batch))["loss"]) for _ in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_mtkd_distils_a_focal_loss_detector_with_its_own_criterion():
    # Conditional DETR keeps DETR's encoder, so ACT applies; MTKD uses the focal criterion
    from detr_jax.training.mtkd import MTKDConfig, mtkd_loss_fn
    cfg = tiny_conditional_detr_config()
    model = build_model(cfg, seed=0)
    criterion = model.default_criterion(focal_loss_config())
    batch = fixed_batch(cfg.num_classes)
    train_cfg = train_config(global_batch=4, lr=1e-3, lr_backbone=1e-4, lr_drop_epochs=(),
                             max_targets=2, frozen=())
    # a wide bucket merges tokens, so the ACT branch's boxes differ from the exact branch's
    mtkd = MTKDConfig(act="act:L=2,r=1000", kd_weight=1.0, kd_queries="matched")
    trainer = Trainer(model, train_cfg, loss_fn=mtkd_loss_fn(model, mtkd, criterion))
    # Conditional DETR's box head starts at zero (boxes = reference points, whatever the
    # memory): the ACT branch's boxes differ once a step has trained it
    first = jax.device_get(trainer.step(batch))
    metrics = jax.device_get(trainer.step(batch))
    assert float(first["loss_kd"]) == 0.0
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_kd"]) > 0, metrics
    # the exact branch's loss is the focal recipe's on the same outputs
    outputs = model(jnp.asarray(batch["pixel_values"], jnp.float32) / 255.0,
                    jnp.asarray(batch["padding_mask"]), rng=jax.random.key(0))
    targets = {k: jnp.asarray(batch[k]) for k in ("labels", "boxes", "valid")}
    loss, terms, matches = criterion(outputs, targets, return_matches=True)
    focal, _ = focal_set_criterion(outputs, targets, FocalWeights.from_config(focal_loss_config()))
    assert float(loss) == pytest.approx(float(focal))
    assert matches.shape[1:] == (4, 2)
    with pytest.raises(ValueError, match="eos_coef"):  # DETR's loss section is refused
        model.default_criterion(loss_config())
