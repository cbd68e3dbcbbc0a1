"""Parity with the official PyTorch Anchor DETR-DC5 on the recipe weights (fp32, CPU), and
the top-k post-processing."""

import os

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.convert.anchor import anchor_detr_from_state, anchor_recipe_state_dict
from detr_jax.models.config import config_from_dict
from detr_jax.models.anchor_detr import (AnchorDETR, topk_postprocess,
                                         tiny_anchor_detr_config)
from tests.fixture_vectors import record_errors

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def anchor_reference():
    """Trimmed official Anchor DETR outputs (tests/data/README.md)."""
    with np.load(os.path.join(DATA, "anchor_detr_r50_dc5_official.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def anchor_model():
    return anchor_detr_from_state(anchor_recipe_state_dict(), "<recipe>")


@pytest.fixture(scope="module")
def run_anchor(anchor_model):
    graphdef, state = nnx.split(anchor_model)

    @jax.jit
    def run(state, pixel_values, padding_mask):
        model = nnx.merge(graphdef, state)
        out = model(pixel_values, padding_mask, return_intermediates=True)
        sizes = jnp.stack([jnp.sum(~padding_mask[:, :, 0], axis=1),
                           jnp.sum(~padding_mask[:, 0, :], axis=1)], axis=-1)
        out["post"] = model.postprocess(out, sizes)
        return out

    return lambda pixel_values, padding_mask: run(state, pixel_values, padding_mask)


@pytest.mark.parametrize("case,images", [
    ("exact_single", ["image0"]),
    ("exact_batch", ["image0", "image1"]),
])
def test_matches_official_anchor_detr(run_anchor, reference, anchor_reference, case, images, record_property):
    ref = anchor_reference
    batch = detr_jax.preprocess([reference[i] for i in images], resize_images=False)
    out = run_anchor(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask))
    batch_size, h, w = out["feature_mask"].shape
    memory = np.asarray(out["memory"]).reshape(batch_size, h, w, -1).transpose(0, 3, 1, 2)
    record_errors(record_property, out, ref, case, memory[:, ::4], ref[f"{case}/memory_ch4"])
    assert rel(memory[:, ::4], ref[f"{case}/memory_ch4"]) < 1e-4
    np.testing.assert_allclose(out["pred_logits"], ref[f"{case}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], ref[f"{case}/pred_boxes"], rtol=0, atol=1e-4)
    assert len(out["aux_outputs"]) == 5 and out["encoder_stats"] == [None] * 6
    if case == "exact_single":
        for layer, aux in enumerate(out["aux_outputs"]):
            assert rel(np.asarray(aux["pred_logits"])[:, ::4],
                       ref[f"{case}/aux_pred_logits_q4"][layer]) < 1e-4
            assert rel(aux["pred_boxes"], ref[f"{case}/aux_pred_boxes"][layer]) < 1e-4
    # post-processing with each image's own size, as the official run
    scores, labels, boxes = map(np.asarray, out["post"])
    np.testing.assert_allclose(scores, ref[f"{case}/post_scores"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, ref[f"{case}/post_labels"])
    scale = np.array([[s[1], s[0], s[1], s[0]] for s in batch.original_sizes], np.float32)
    # boxes in [0, 1] units (pixel coordinates carry the fp32 error times the image size)
    np.testing.assert_allclose(boxes / scale[:, None], ref[f"{case}/post_boxes"] / scale[:, None],
                               rtol=0, atol=1e-5)


def test_padded_batch_differs_from_single_as_official(anchor_reference):
    """GroupNorm and RCDA's key averages see the padding: image0's outputs change when it is
    padded in a batch, by far more than our error, in the official model too."""
    single = anchor_reference["exact_single/pred_logits"][0]
    batched = anchor_reference["exact_batch/pred_logits"][0]
    assert np.abs(single - batched).max() > 1e-2


def test_topk_postprocess_decodes_query_and_class():
    logits = np.full((2, 3, 4), -9.0, np.float32)
    logits[0, 2, 1] = 3.0      # best of image 0: query 2, class 1
    logits[0, 0, 3] = 1.0      # second: query 0, class 3
    logits[1, 1, 0] = 2.0
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]] * 2,
                     np.float32)
    sizes = np.array([[100, 200], [10, 20]])
    scores, labels, xyxy = map(np.asarray, topk_postprocess(logits, boxes, sizes, num_select=2))
    np.testing.assert_allclose(scores[0], 1 / (1 + np.exp([-3.0, -1.0])), rtol=1e-6)
    np.testing.assert_array_equal(labels, [[1, 3], [0, 0]])
    np.testing.assert_allclose(xyxy[0, 0], [0.0, 50.0, 100.0, 100.0], atol=1e-4)
    np.testing.assert_allclose(xyxy[0, 1], [80.0, 30.0, 120.0, 70.0], atol=1e-4)
    np.testing.assert_allclose(xyxy[1, 0], [1.0, 0.5, 3.0, 1.5], atol=1e-5)


def test_tiny_model_shapes_and_boxes_relative_to_anchor_points():
    from detr_jax.convert.anchor import build_anchor_detr, expected_anchor_shapes
    from detr_jax.convert.recipe import recipe_tensor
    cfg = tiny_anchor_detr_config()
    shapes = expected_anchor_shapes(build_anchor_detr(cfg, abstract=True))
    state = {name: recipe_tensor(name, shape, index, 3)
             for index, (name, shape) in enumerate(sorted(shapes.items()))}
    model = anchor_detr_from_state(state, "<tiny>", dilation=False)
    assert config_from_dict(model.config).to_dict() == model.config
    # a box head that predicts no offset puts every box centre on its query's anchor point
    last = model.transformer.bbox_embed.layers[-1]
    last.kernel.set_value(jnp.zeros_like(last.kernel[...]))
    last.bias.set_value(jnp.zeros_like(last.bias[...]))
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, pixels, mask):
        module = nnx.merge(graphdef, params)
        out = module(pixels, mask)
        return out, module.postprocess(out, jnp.array([[64, 96], [32, 64]]))

    pixels = jax.random.normal(jax.random.key(1), (2, 64, 96, 3))
    mask = np.zeros((2, 64, 96), bool)
    mask[1, 32:] = True
    mask[1, :, 64:] = True
    out, (scores, labels, boxes) = run(params, pixels, jnp.asarray(mask))
    queries = cfg.num_query_position * cfg.num_query_pattern
    assert out["pred_logits"].shape == (2, queries, cfg.num_classes)
    assert out["pred_boxes"].shape == (2, queries, 4)
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1
    kept = min(100, queries * cfg.num_classes)  # the official 100, at most every pair
    assert scores.shape == (2, kept) and boxes.shape == (2, kept, 4)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
    assert int(labels.max()) < cfg.num_classes
    anchors = np.tile(state["transformer.position.weight"], (cfg.num_query_pattern, 1))
    np.testing.assert_allclose(out["pred_boxes"][1, :, :2], anchors, atol=1e-5)
    np.testing.assert_allclose(out["pred_boxes"][0, :, 2:], 0.5, atol=1e-6)


def dot_macs(fn, *args):
    """Multiply-accumulates of every matrix product in ``fn``'s program (no bias adds)."""
    def count(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += count(sub)
        return total
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("h,w", [(3, 5), (6, 4)])
def test_rcda_flops_match_the_computed_products(h, w):
    from detr_jax.models.anchor_flops import rcda_macs
    from detr_jax.models.rcda import RowColumnAttention
    d, queries = 16, 7
    attn = RowColumnAttention(d, 4, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(attn)
    query = jnp.ones((1, queries, d))
    keys = jnp.ones((1, h, w, d))

    def call(state, query, keys):
        return nnx.merge(graphdef, state)(query, query, keys, keys, keys)

    counted = rcda_macs(queries, queries, h, w, h, w, d)
    biases = 3 * queries * d + (h + w + h * w) * d
    assert dot_macs(call, state, query, keys) == counted["projections"] - biases + counted["products"]


def test_model_flops_follow_the_map_size():
    model = nnx.eval_shape(lambda: AnchorDETR(tiny_anchor_detr_config(), rngs=nnx.Rngs(0)))
    small, large = model.flops((64, 64)), model.flops((128, 128))
    assert large["feature_hw"] == (4, 4) and small["feature_hw"] == (2, 2)
    assert 3.5 < large["backbone"] / small["backbone"] < 4.5
    assert large["transformer"] > small["transformer"]
    padded = model.flops((128, 128), valid_hw=(64, 128))
    assert padded["valid_tokens"] == 8
    assert padded["encoder_attention_products"] < large["encoder_attention_products"]
    assert padded["total"] == pytest.approx(padded["backbone"] + padded["transformer"])
    standard = dict(model.config, attention_type="nn.MultiheadAttention")
    from detr_jax.models.anchor_flops import anchor_detr_flops
    counted = anchor_detr_flops(standard, (128, 128))
    assert counted["encoder_attention_products"] == 2 * 2 * 16 ** 2 * 32  # layers 2 N^2 d
    with pytest.raises(ValueError, match="encoder_stats"):  # ACT's cost depends on the data
        anchor_detr_flops(dict(standard, encoder_attention="act:L=8"), (128, 128))
    act = anchor_detr_flops(dict(standard, encoder_attention="act:L=8"), (128, 128),
                            encoder_stats=[{"cluster_ratio": 0.25}] * 2)
    assert act["encoder_attention_products"] == pytest.approx(
        counted["encoder_attention_products"] / 4)
    assert act["hashing_and_clustering"] > 0


@pytest.mark.parametrize("name,attention_type", [("rcda", "RCDA"),
                                                 ("standard", "nn.MultiheadAttention")])
def test_transformer_matches_official_for_both_attention_types(name, attention_type):
    """The official ``Transformer`` alone (d 256, 2 + 2 layers, FFN 64, 6 anchor points x 2
    patterns) on random features with a padded image, for RCDA and for the official
    standard-attention option (tests/data/README.md)."""
    from detr_jax.convert.anchor import build_anchor_detr, expected_anchor_shapes
    from detr_jax.convert.recipe import recipe_tensor
    with np.load(os.path.join(DATA, "anchor_transformer_official_tiny.npz")) as data:
        ref = {k: data[k] for k in data.files}
    cfg = tiny_anchor_detr_config(hidden_dim=256, num_heads=8, ffn_dim=64, input_proj_groups=32,
                                  num_classes=91, attention_type=attention_type)
    shapes = expected_anchor_shapes(build_anchor_detr(cfg, abstract=True))
    state = {n: recipe_tensor(n, s, i, 5) for i, (n, s) in enumerate(sorted(shapes.items()))}
    model = anchor_detr_from_state(state, "<tiny>")
    assert model.config["attention_type"] == attention_type
    graphdef, params = nnx.split(model.transformer)

    @jax.jit
    def run(params, src, mask):
        transformer = nnx.merge(graphdef, params)
        pos = transformer.position_embeddings(mask)
        memory, stats = transformer.encode(src, mask, pos)
        return transformer.decode(memory, mask, pos)

    logits, boxes = run(params, jnp.asarray(ref["srcs"]), jnp.asarray(ref["mask"]))
    np.testing.assert_allclose(logits, ref[f"{name}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(boxes, ref[f"{name}/pred_boxes"], rtol=0, atol=1e-4)


def test_standard_attention_type_runs_encoder_attention_variants():
    """With the official standard-attention option the encoder takes the attention
    variants (here ACT, which needs a key and reports per-layer statistics)."""
    from detr_jax.convert.anchor import build_anchor_detr, expected_anchor_shapes
    from detr_jax.convert.recipe import recipe_tensor
    cfg = tiny_anchor_detr_config(attention_type="nn.MultiheadAttention")
    shapes = expected_anchor_shapes(build_anchor_detr(cfg, abstract=True))
    state = {n: recipe_tensor(n, s, i, 2) for i, (n, s) in enumerate(sorted(shapes.items()))}
    exact = anchor_detr_from_state(state, "<tiny>", dilation=False)
    act = anchor_detr_from_state(state, "<tiny>", dilation=False, encoder_attention="act:L=8")
    pixels = jax.random.normal(jax.random.key(4), (1, 96, 128, 3))
    mask = jnp.zeros((1, 96, 128), bool)

    def run(model):
        graphdef, params = nnx.split(model)
        fn = jax.jit(lambda p, x, m, k: nnx.merge(graphdef, p)(x, m, rng=k))
        return fn(params, pixels, mask, jax.random.key(0))

    out_exact, out_act = run(exact), run(act)
    assert out_exact["encoder_stats"] == [None, None]
    assert len(out_act["encoder_stats"]) == 2 and out_act["encoder_stats"][0] is not None
    assert np.all(np.isfinite(out_act["pred_logits"]))
    assert not np.allclose(out_act["pred_logits"], out_exact["pred_logits"])
    assert len(act.encoder_attention_layers()) == 2


def test_implements_the_detector_interface():
    from detr_jax.models.detector import Detector
    model = nnx.eval_shape(lambda: AnchorDETR(tiny_anchor_detr_config(), rngs=nnx.Rngs(0)))
    assert isinstance(model, Detector)
    assert model.config["detector"] == "anchor_detr"
