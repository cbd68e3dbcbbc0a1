"""The jitted inference wrapper over ``nnx.split`` state."""

import jax
import numpy as np
from flax import nnx

import detr_jax
from detr_jax.models.config import tiny_model_config
from detr_jax.models.inference import Forward


def test_loaded_state_is_placed_on_the_device_once(tmp_path):
    """A model loaded from a checkpoint holds NumPy arrays; Forward keeps device copies,
    so a call does not transfer the parameters again, and computes what the built model
    computes."""
    model = detr_jax.build_model(tiny_model_config(), seed=3)
    loaded = detr_jax.load_model(detr_jax.save_model(model, str(tmp_path / "ckpt")))
    host = [x for x in jax.tree.leaves(nnx.state(loaded)) if not isinstance(x, jax.Array)]
    assert host, "the premise: a loaded model's state holds host arrays"
    forward = Forward(loaded)
    leaves = jax.tree.leaves(forward.state)
    assert leaves and all(isinstance(x, jax.Array) for x in leaves)
    pixels = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    mask = np.zeros((1, 64, 64), bool)
    want = Forward(model)(pixels, mask)
    got = forward(pixels, mask)
    np.testing.assert_allclose(np.asarray(got["pred_boxes"]), np.asarray(want["pred_boxes"]),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["pred_logits"]), np.asarray(want["pred_logits"]),
                               rtol=1e-6, atol=1e-6)
    assert forward.compiles == 1


def test_forward_folds_a_copy_and_computes_what_the_model_computes():
    """Forward runs the inference copy (frozen BatchNorms folded once); the model it was
    given keeps its state (it may train or be saved), and the outputs match the unfolded
    forward pass."""
    from detr_jax.models.backbone import FrozenBatchNorm
    model = detr_jax.build_model(tiny_model_config(), seed=4)
    before = jax.tree.structure(nnx.state(model))
    pixels = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    mask = np.zeros((2, 64, 64), bool)
    mask[1, 40:] = True
    with jax.default_matmul_precision("highest"):
        folded = Forward(model)(pixels, mask)
        unfolded = Forward(model, fold_norms=False)(pixels, mask)
    assert jax.tree.structure(nnx.state(model)) == before
    assert any(isinstance(m, FrozenBatchNorm) for _, m in nnx.iter_modules(model))
    for key in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(np.asarray(folded[key]), np.asarray(unfolded[key]),
                                   rtol=1e-5, atol=1e-5)
