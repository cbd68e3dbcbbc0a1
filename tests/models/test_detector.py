"""The detector interface and registry: DETR implements it, the config picks the class,
old configs without ``detector`` still build DETR, and an unknown name is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.evaluation.layer_stats import read_layer_stats
from detr_jax.models import DETR, Detector, tiny_model_config
from detr_jax.models.build import build_model
from detr_jax.models.config import config_from_dict
from detr_jax.models.detector import encoder_key
from detr_jax.models.registry import DETECTORS, detector_class, register_detector


def _inputs(batch=1, hw=(64, 96)):
    pixels = jax.random.normal(jax.random.key(1), (batch, *hw, 3))
    mask = jnp.zeros((batch, *hw), bool).at[:, :, 80:].set(True)
    return pixels, mask


def test_detr_is_registered_and_implements_the_protocol():
    assert detector_class("detr") is DETR
    model = build_model(tiny_model_config(), seed=0)
    assert isinstance(model, Detector)
    assert model.config["detector"] == "detr"


def test_old_config_without_detector_builds_detr():
    values = tiny_model_config().to_dict()
    del values["detector"]
    cfg = config_from_dict(values)
    assert cfg.detector == "detr"
    assert type(build_model(cfg)) is DETR


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        build_model(tiny_model_config(detector="nope"))
    with pytest.raises(ValueError, match="already registered"):
        register_detector("detr", type("Other", (), {}), dict)


def test_registered_class_is_built(monkeypatch):
    class Tagged(DETR):
        pass
    monkeypatch.setitem(DETECTORS, "tagged", Tagged)
    assert type(build_model(tiny_model_config(detector="tagged"))) is Tagged


def test_stages_and_postprocess_match_the_call():
    model = build_model(tiny_model_config(encoder_attention="act:L=4"), seed=0)
    pixels, mask = _inputs()
    key = jax.random.key(3)
    full = model(pixels, mask, rng=key)
    features, fmask, pos = model.backbone_features(pixels, mask)
    memory, stats = model.encode(features, fmask, pos, rng=encoder_key(key))
    out = model.decode(memory, fmask, pos)
    np.testing.assert_allclose(out["pred_logits"], full["pred_logits"], rtol=1e-6, atol=1e-6)
    sizes = jnp.array([[480, 640]])
    scores, labels, boxes = model.postprocess(out, sizes)
    assert labels.dtype == jnp.int32 and boxes.shape == (1, 10, 4)
    import detr_jax
    listed = detr_jax.postprocess(full, sizes, model=model)[0]
    default = detr_jax.postprocess(full, sizes)[0]
    np.testing.assert_allclose(listed["scores"], scores[0], rtol=1e-6)
    np.testing.assert_allclose(default["boxes"], listed["boxes"], rtol=1e-6)


def test_encoder_attention_inputs_reproduce_the_encoder():
    model = build_model(tiny_model_config(encoder_attention="act:L=4"), seed=0)
    pixels, mask = _inputs()
    rng = encoder_key(jax.random.key(5))
    calls, (h, w) = model.encoder_attention_inputs(pixels, mask, rng)
    layers = model.encoder_attention_layers()
    assert len(calls) == len(layers) == 2 and (h, w) == (2, 3)
    _, stats = model.encode(*model.backbone_features(pixels, mask), rng=rng)
    for attention, (q, k, v, m, attn_rng), expected in zip(layers, calls, stats):
        _, got = attention(q, k, v, m, attn_rng)
        np.testing.assert_array_equal(np.asarray(read_layer_stats(got)[0]),
                                      np.asarray(read_layer_stats(expected)[0]))


def test_flops_delegate_to_the_counter():
    from detr_jax.flops import count_flops
    model = build_model(tiny_model_config(), seed=0)
    got = model.flops((64, 96), valid_hw=(64, 80))
    want = count_flops(model.config, (64, 96), valid_hw=(64, 80), attention="exact")
    assert got["total"] == want["total"] and got["total"] > 0
