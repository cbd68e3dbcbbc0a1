"""MTKD: the KD term teaches only the ACT branch; one step updates the shared weights."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig
from detr_jax.data.coco import CocoSource
from detr_jax.models.build import build_model
from detr_jax.training.data import TrainLoader
from detr_jax.training.losses import LossWeights, detr_criterion, set_criterion
from detr_jax.training.mtkd import MTKDConfig, box_distillation, mtkd_loss, mtkd_loss_fn
from detr_jax.training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def outputs(rng, batch=2, queries=5, classes=4):
    return {"pred_logits": jnp.asarray(rng.normal(size=(batch, queries, classes)), jnp.float32),
            "pred_boxes": jnp.asarray(rng.uniform(0.2, 0.6, (batch, queries, 4)), jnp.float32),
            "aux_outputs": []}


def two_targets(rng, labels=((1, 2), (3, 0))):
    """Targets of two images: two boxes in the first, one in the second (slot 2 empty)."""
    return {"labels": jnp.array(labels),
            "boxes": jnp.asarray(rng.uniform(0.3, 0.5, (2, 2, 4)), jnp.float32),
            "valid": jnp.array([[True, True], [True, False]])}


def test_kd_gradient_reaches_the_act_boxes_only():
    rng = np.random.default_rng(0)
    exact, act = outputs(rng), outputs(rng)
    targets = two_targets(rng, labels=((1, 2), (0, 0)))
    weights, config = LossWeights(), MTKDConfig(kd_weight=1.0)

    def total(exact_boxes, act_boxes):
        e = dict(exact, pred_boxes=exact_boxes)
        a = dict(act, pred_boxes=act_boxes)
        return mtkd_loss(e, a, targets, detr_criterion(weights), config)[0]

    d_exact, d_act = jax.grad(total, argnums=(0, 1))(exact["pred_boxes"], act["pred_boxes"])
    # The exact branch's boxes get exactly the gradient of the DETR loss: nothing from KD.
    pred_only = jax.grad(lambda b: set_criterion(dict(exact, pred_boxes=b), targets, weights)[0])(
        exact["pred_boxes"])
    np.testing.assert_allclose(d_exact, pred_only, atol=1e-7)
    # The ACT boxes get the L2 pull toward the (fixed) exact boxes: 2 (a - e) / (B Q).
    expected = 2 * (act["pred_boxes"] - exact["pred_boxes"]) / (2 * 5)
    np.testing.assert_allclose(d_act, expected, rtol=1e-5, atol=1e-8)
    assert float(box_distillation(act["pred_boxes"], act["pred_boxes"])) == 0.0


def test_kd_distance_and_normalization_options_match_hand_computed_values():
    student = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])   # (1, 2, 4)
    teacher = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.4, 0.5, 0.1, 0.1]]])   # query 1 off by (0.3, 0.4)
    # squared distances 0 and 0.25, distances 0 and 0.5
    assert np.isclose(float(box_distillation(student, teacher)), 0.25 / 2)
    assert np.isclose(float(box_distillation(student, teacher, distance="l2")), 0.5 / 2)
    assert np.isclose(float(box_distillation(student, teacher, distance="l2",
                                             num_boxes=jnp.float32(4.0))), 0.5 / 4)
    # the l2 gradient is finite where the boxes coincide and a unit vector elsewhere
    grad = jax.grad(lambda s: box_distillation(s, teacher, distance="l2", num_boxes=1.0))(student)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(grad[0, 0], 0.0)
    np.testing.assert_allclose(grad[0, 1], [-0.6, -0.8, 0.0, 0.0], rtol=1e-5)
    with pytest.raises(ValueError, match="kd_distance"):
        MTKDConfig(kd_distance="l1")
    with pytest.raises(ValueError, match="kd_normalize"):
        MTKDConfig.from_config({"enabled": True, "kd_normalize": "images"})


def test_kd_boxes_normalization_divides_by_the_target_count():
    rng = np.random.default_rng(1)
    exact, act = outputs(rng), outputs(rng)
    targets = two_targets(rng)
    config = MTKDConfig(kd_normalize="boxes", kd_distance="l2")
    _, metrics = mtkd_loss(exact, act, targets, detr_criterion(), config)
    distances = np.linalg.norm(np.asarray(act["pred_boxes"] - exact["pred_boxes"]), axis=-1)
    np.testing.assert_allclose(float(metrics["loss_kd"]), distances.sum() / 3, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_batch(synthetic_root):
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                        str(synthetic_root / "train"))
    loader = TrainLoader(source, global_batch=4, seed=0, augment=AugmentConfig.from_data_config(cfg.data),
                         granularity=32, max_targets=cfg.train.max_targets)
    return cfg, loader.batch(0)


def encoder_params(trainer):
    state = nnx.to_flat_state(trainer.state["trainable"])
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in state
            if p[0] in ("transformer", "backbone", "input_proj")}


def test_one_mtkd_step_updates_the_shared_weights_through_both_branches(tiny_batch):
    cfg, batch = tiny_batch
    before = None
    after = {}
    for kd_weight in (1.0, 0.0):
        model = build_model(cfg.model, seed=0)
        mtkd = MTKDConfig(act="act:L=8,r=1", kd_weight=kd_weight)
        trainer = Trainer(model, cfg.train, LossWeights(),
                          loss_fn=mtkd_loss_fn(model, mtkd, detr_criterion()))
        before = encoder_params(trainer)
        metrics = jax.device_get(trainer.step(batch))
        assert np.isfinite(metrics["loss"]) and float(metrics["loss_kd"]) > 0
        # the KD term's share of the loss is logged: weighted KD / total, in [0, 1]
        share = float(metrics["kd_share"])
        assert 0.0 <= share <= 1.0
        np.testing.assert_allclose(share, kd_weight * float(metrics["loss_kd"])
                                   / float(metrics["loss"]), rtol=1e-5)
        assert (share > 0) == (kd_weight > 0)
        after[kd_weight] = encoder_params(trainer)
    encoder = [k for k in before if k.startswith("transformer/encoder")]
    assert encoder and any(not np.array_equal(before[k], after[1.0][k]) for k in encoder)
    # The KD term (through the ACT branch only) moves the shared encoder weights too.
    assert any(not np.allclose(after[1.0][k], after[0.0][k], atol=1e-9) for k in encoder)
    # The saved model is the plain exact DETR (its ACT twin shares every parameter).
    assert trainer.model().config["encoder_attention"] == "exact"


def test_kd_on_matched_queries_ignores_the_others():
    rng = np.random.default_rng(2)
    exact, act = outputs(rng), outputs(rng)
    targets = two_targets(rng)
    config = MTKDConfig(kd_queries="matched")
    _, _, matches = set_criterion(exact, targets, LossWeights(), return_matches=True)
    mask = np.zeros((2, 5), bool)
    for b in range(2):
        for t in range(2):
            if targets["valid"][b, t]:
                mask[b, int(matches[0, b, t])] = True
    assert mask.sum() == 3
    squared = np.sum(np.asarray(act["pred_boxes"] - exact["pred_boxes"]) ** 2, axis=-1)
    _, metrics = mtkd_loss(exact, act, targets, detr_criterion(), config)
    np.testing.assert_allclose(float(metrics["loss_kd"]), squared[mask].mean(), rtol=1e-5)
    # moving an unmatched query's ACT box changes nothing; a matched one's does
    b, q = np.argwhere(~mask)[0]
    moved = dict(act, pred_boxes=act["pred_boxes"].at[b, q].add(0.1))
    assert float(mtkd_loss(exact, moved, targets, detr_criterion(), config)[1]["loss_kd"]) == \
        pytest.approx(float(metrics["loss_kd"]), rel=1e-6)
    b, q = np.argwhere(mask)[0]
    moved = dict(act, pred_boxes=act["pred_boxes"].at[b, q].add(0.1))
    assert float(mtkd_loss(exact, moved, targets, detr_criterion(), config)[1]["loss_kd"]) != \
        pytest.approx(float(metrics["loss_kd"]), rel=1e-3)
    with pytest.raises(ValueError, match="kd_queries"):
        MTKDConfig(kd_queries="confident")
    with pytest.raises(ValueError, match="loss.aux"):
        mtkd_loss(dict(exact, aux_outputs=[outputs(rng)]), dict(act, aux_outputs=[outputs(rng)]),
                  targets, detr_criterion(LossWeights(aux=False)),
                  MTKDConfig(kd_queries="matched", kd_aux=True))


def test_kd_share_counts_the_weighted_kd_term_against_every_loss_term():
    rng = np.random.default_rng(3)
    exact, act = outputs(rng), outputs(rng)
    targets = two_targets(rng)
    config = MTKDConfig(kd_weight=2.0, act_loss=True, kd_distance="l2")
    total, metrics = mtkd_loss(exact, act, targets, detr_criterion(), config)
    expected = 2.0 * metrics["loss_kd"] / (metrics["loss_exact"] + 2.0 * metrics["loss_kd"]
                                           + metrics["loss_act"])
    np.testing.assert_allclose(metrics["kd_share"], expected, rtol=1e-6)
    assert 0.0 < float(metrics["kd_share"]) < 1.0 and np.isclose(float(total), float(metrics["loss"]))
