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


def test_shape_only_shells_are_memoized_but_independent():
    from flax import nnx
    from detr_jax.attention import parse_attention
    from detr_jax.models.build import with_encoder_attention
    cfg = tiny_model_config()
    first = build_model(cfg, encoder_attention="act:L=8", abstract=True)
    # the same config as another object and the spec instead of its string: same shell
    second = build_model(config_from_dict(cfg.to_dict()),
                         encoder_attention=parse_attention("act:L=8"), abstract=True)
    assert nnx.graphdef(first) == nnx.graphdef(second)
    assert first is not second
    path, var = nnx.to_flat_state(nnx.state(first))[0]
    var.set_value(np.zeros(var.get_value().shape, np.float32))
    # setting a value in one shell leaves the other (and the memo) shape-only
    other = dict(nnx.to_flat_state(nnx.state(second)))[path].get_value()
    assert isinstance(other, jax.ShapeDtypeStruct)
    third = build_model(cfg, encoder_attention="act:L=8", abstract=True)
    assert isinstance(dict(nnx.to_flat_state(nnx.state(third)))[path].get_value(),
                      jax.ShapeDtypeStruct)
    # another config value is another shell
    wider = build_model(tiny_model_config(hidden_dim=64), encoder_attention="act:L=8",
                        abstract=True)
    shapes = lambda m: [v.get_value().shape for _, v in nnx.to_flat_state(nnx.state(m))]
    assert shapes(wider) != shapes(second)
    # variants built from a concrete model share its arrays and still run
    model = build_model(cfg, seed=0)
    variant = with_encoder_attention(model, parse_attention("act:L=8"))
    pixels, mask = _inputs()
    out = variant(pixels, mask, rng=jax.random.key(0))
    assert np.isfinite(np.asarray(out["pred_logits"])).all()
