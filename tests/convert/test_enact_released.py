"""Parity with the released DETR-ENACT code (GSavathrakis/ENACT, R50-C5, sigma 3) on the
recipe weights, and loading/converting checkpoints that hold its ENACT modules."""

import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.attention.enact import ENACT, ENACTAttention
from detr_jax.convert import CheckpointError
from detr_jax.convert.recipe import recipe_state_for_config
from detr_jax.evaluation.postprocess import postprocess_arrays
from detr_jax.models.config import tiny_model_config
from detr_jax.models.inference import Forward
from tests.fixture_vectors import load_fixture, rel, record_errors



@pytest.fixture(scope="module")
def released():
    return load_fixture("detr_enact_r50_released")


@pytest.fixture(scope="module")
def model(released):
    return detr_jax.load_torch_checkpoint(released[0])


def test_released_checkpoint_loads_as_released_enact(released, model):
    state, _ = released
    assert model.config["encoder_attention"] == "enact:sigma=3,variant=released"
    assert model.config["backbone"]["dilation"] is False
    layers = model.transformer.encoder.layers
    assert all(isinstance(layer.self_attn, ENACTAttention) for layer in layers)
    attn = layers[4].self_attn
    prefix = "transformer.encoder.layers.4.self_attn."
    np.testing.assert_array_equal(attn.k_proj.kernel[...], state[prefix + "W_k.weight"].T)
    np.testing.assert_array_equal(attn.out_proj.bias[...], state[prefix + "W_o.bias"])
    np.testing.assert_array_equal(attn.entropy.kernel[...], state[prefix + "W_prob.weight"].T)
    # an ENACT setting given by the caller is kept
    other = detr_jax.load_torch_checkpoint(state, encoder_attention="enact:sigma=5,variant=released")
    assert other.config["encoder_attention"] == "enact:sigma=5,variant=released"
    with pytest.raises(CheckpointError, match="ENACT attention modules.*not 'act:L=32"):
        detr_jax.load_torch_checkpoint(state, encoder_attention="act:L=32")


@pytest.mark.parametrize("case,images", [("enact_single", ["image0"]),
                                         ("enact_batch", ["same0", "same1"])])
def test_matches_released_detr_enact(released, model, case, images, record_property):
    _, reference = released
    arrays = [reference[i] for i in images]
    batch = detr_jax.preprocess(arrays, resize_images=False)
    assert not np.asarray(batch.padding_mask).any()  # the fixtures have no padding
    out = Forward(model, return_intermediates=True)(jnp.asarray(batch.pixel_values),
                                                    jnp.asarray(batch.padding_mask))
    record_errors(record_property, out, reference, case, np.asarray(out["memory"]).transpose(1, 0, 2), reference[f"{case}/memory"])
    assert rel(np.asarray(out["memory"]).transpose(1, 0, 2), reference[f"{case}/memory"]) < 1e-4
    np.testing.assert_allclose(out["pred_logits"], reference[f"{case}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], reference[f"{case}/pred_boxes"], rtol=0, atol=1e-4)
    sizes = jnp.asarray([a.shape[:2] for a in arrays])
    scores, labels, boxes = postprocess_arrays(out["pred_logits"], out["pred_boxes"], sizes)
    np.testing.assert_array_equal(labels, reference[f"{case}/post_labels"])
    np.testing.assert_allclose(scores, reference[f"{case}/post_scores"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(boxes, reference[f"{case}/post_boxes"], rtol=0, atol=0.05)


def test_convert_cli_keeps_the_enact_modules(tmp_path):
    torch = pytest.importorskip("torch")
    from detr_jax.checkpoint import load_model
    from detr_jax.convert.cli import main
    cfg = tiny_model_config(num_heads=8)
    cfg.encoder_attention = "enact:sigma=3,variant=released"
    state = recipe_state_for_config(cfg)
    assert "transformer.encoder.layers.0.self_attn.W_prob.weight" in state
    assert not any(k.endswith("in_proj_weight") and ".encoder." in k for k in state)
    path = tmp_path / "detr-enact-tiny.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    assert main(["--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 0
    loaded = load_model(str(tmp_path / "out"))
    assert loaded.config["encoder_attention"] == "enact:sigma=3,variant=released"
    attn = loaded.transformer.encoder.layers[0].self_attn
    assert isinstance(attn, ENACTAttention) and attn.spec == ENACT(sigma=3.0, variant="released")
    np.testing.assert_array_equal(attn.q_proj.kernel[...],
                                  state["transformer.encoder.layers.0.self_attn.W_q.weight"].T)
