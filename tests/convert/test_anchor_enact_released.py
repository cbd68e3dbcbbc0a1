"""Parity with the released Anchor-DETR-ENACT code (GSavathrakis/ENACT, R50-DC5, sigma 5) on
the recipe weights, loading checkpoints that hold its entropy layers, and the
padding-correct ENACT RCDA (``variant=paper``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention.enact import ENACT
from detr_jax.convert import CheckpointError
from detr_jax.convert.anchor import (anchor_detr_from_state, build_anchor_detr,
                                     expected_anchor_shapes)
from detr_jax.convert.recipe import recipe_tensor
from detr_jax.models.anchor_detr import tiny_anchor_detr_config
from detr_jax.models.anchor_flops import anchor_detr_flops
from detr_jax.models.rcda_enact import RowColumnENACT
from tests.fixture_vectors import load_fixture, rel, record_errors

ENACT_KEY = "transformer.encoder_layers.0.ENACT.W_prob.weight"


@pytest.fixture(scope="module")
def released():
    return load_fixture("anchor_detr_enact_r50_dc5_released")


@pytest.fixture(scope="module")
def model(released):
    return detr_jax.load_torch_checkpoint(released[0])


@pytest.fixture(scope="module")
def run(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, pixel_values, padding_mask):
        m = nnx.merge(graphdef, state)
        out = m(pixel_values, padding_mask, return_intermediates=True)
        sizes = jnp.stack([jnp.sum(~padding_mask[:, :, 0], axis=1),
                           jnp.sum(~padding_mask[:, 0, :], axis=1)], axis=-1)
        out["post"] = m.postprocess(out, sizes)
        return out

    return lambda pixel_values, padding_mask: forward(state, pixel_values, padding_mask)


def test_released_checkpoint_loads_as_anchor_detr_with_enact(released, model):
    state, _ = released
    cfg = model.config
    assert cfg["detector"] == "anchor_detr" and cfg["attention_type"] == "RCDA"
    assert cfg["encoder_attention"] == "enact:sigma=5,variant=released"
    assert cfg["backbone"]["dilation"] is True
    for index, layer in enumerate(model.transformer.encoder_layers):
        attn = layer.self_attn
        assert isinstance(attn, RowColumnENACT) and attn.spec == ENACT(sigma=5.0, variant="released")
        prefix = f"transformer.encoder_layers.{index}."
        np.testing.assert_array_equal(attn.entropy.kernel[...], state[prefix + "ENACT.W_prob.weight"].T)
        np.testing.assert_array_equal(attn.entropy.bias[...], state[prefix + "ENACT.W_prob.bias"])
        np.testing.assert_array_equal(attn.k_row_proj.kernel[...],
                                      state[prefix + "self_attn.in_proj_weight"][512:768].T)


def test_caller_enact_setting_kept_and_wrong_input_named(released):
    state, _ = released
    other = anchor_detr_from_state(state, "anchor_enact.pth",
                                   encoder_attention="enact:sigma=3,variant=paper")
    assert other.config["encoder_attention"] == "enact:sigma=3"
    with pytest.raises(CheckpointError, match=r"anchor_enact\.pth.*" + ENACT_KEY.replace(".", r"\.")
                       + r".*not 'act:L=32"):
        anchor_detr_from_state(state, "anchor_enact.pth", encoder_attention="act:L=32")
    with pytest.raises(CheckpointError, match=r"anchor_enact\.pth.*" + ENACT_KEY.replace(".", r"\.")
                       + r".*not 'exact'"):
        anchor_detr_from_state(state, "anchor_enact.pth", encoder_attention="exact")
    wrong = dict(state)
    wrong["transformer.encoder_layers.3.ENACT.W_prob.weight"] = np.zeros((2, 256), np.float32)
    with pytest.raises(CheckpointError, match=r"encoder_layers\.3\.ENACT\.W_prob\.weight: \(2, 256\)"):
        anchor_detr_from_state(wrong, "anchor_enact.pth")
    missing = dict(state)
    del missing["transformer.encoder_layers.5.ENACT.W_prob.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.encoder_layers\.5\.ENACT\.W_prob\.bias"):
        anchor_detr_from_state(missing, "anchor_enact.pth")


def tie_sorted(boxes, scores, tol: float = 1e-6):
    """(B, K, 4) boxes with each run of ``scores`` (B, K, descending) that are within
    ``tol`` of their neighbour sorted by coordinates: detections whose scores differ by less
    than the float32 error of the computation come from a top-k in either order."""
    boxes = np.array(boxes)
    for b in range(boxes.shape[0]):
        start = 0
        for end in range(1, boxes.shape[1] + 1):
            if end == boxes.shape[1] or scores[b, end - 1] - scores[b, end] > tol:
                run = boxes[b, start:end]
                boxes[b, start:end] = run[np.lexsort(run.T[::-1])]
                start = end
    return boxes


@pytest.mark.parametrize("case,images", [("enact_single", ["image0"]),
                                         ("enact_batch", ["image0", "image1"])])
def test_matches_released_anchor_detr_enact(released, reference, model, run, case, images, record_property):
    _, expected = released
    if case == "enact_batch":  # the fixture crops both images to one size: no padding
        crop_h, crop_w = expected["same_crop_hw"]
        arrays = [reference[i][:crop_h, :crop_w] for i in images]
    else:
        arrays = [reference[i] for i in images]
    batch = detr_jax.preprocess(arrays, resize_images=False)
    assert not np.asarray(batch.padding_mask).any()
    out = run(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask))
    batch_size, h, w = out["feature_mask"].shape
    memory = np.asarray(out["memory"]).reshape(batch_size, h, w, -1).transpose(0, 3, 1, 2)
    record_errors(record_property, out, expected, case, memory[:, ::4], expected[f"{case}/memory_ch4"])
    assert rel(memory[:, ::4], expected[f"{case}/memory_ch4"]) < 1e-4
    np.testing.assert_allclose(out["pred_logits"], expected[f"{case}/pred_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["pred_boxes"], expected[f"{case}/pred_boxes"], rtol=0, atol=1e-4)
    scores, labels, boxes = map(np.asarray, out["post"])
    np.testing.assert_array_equal(labels, expected[f"{case}/post_labels"])
    np.testing.assert_allclose(scores, expected[f"{case}/post_scores"], rtol=0, atol=1e-5)
    scale = np.array([[s[1], s[0], s[1], s[0]] for s in batch.original_sizes], np.float32)
    # boxes in [0, 1] units (pixel coordinates carry the fp32 error times the image size);
    # detections of exactly equal score (the batch case has such a pair) come in either
    # order from a top-k, so each run of equal reference scores is compared sorted
    ties = expected[f"{case}/post_scores"]
    np.testing.assert_allclose(tie_sorted(boxes / scale[:, None], ties),
                               tie_sorted(expected[f"{case}/post_boxes"] / scale[:, None], ties),
                               rtol=0, atol=1e-5)
    counts = [np.asarray(s.num_clusters) for s in out["encoder_stats"]]
    assert all(c.shape == (batch_size, 8) and (c == c[0, 0]).all() for c in counts)
    # FLOPs of one image from its pooled-token counts: ENACT RCDA is cheaper than RCDA
    one = [jax.tree.map(lambda x: x[:1] if x.ndim else x, s) for s in out["encoder_stats"]]
    flops = model.flops(arrays[0].shape[:2], encoder_stats=one)
    plain = anchor_detr_flops(dict(model.config, encoder_attention="exact"), arrays[0].shape[:2])
    assert flops["attention"] == "rcda+enact:sigma=5,variant=released"
    assert 0 < flops["encoder_attention"] < plain["encoder_attention"]
    assert flops["hashing_and_clustering"] > 0 and flops["decoder"] == plain["decoder"]


# ----------------------------------------------------------------- tiny models


def tiny_module(variant):
    spec = ENACT(sigma=1.0, variant=variant)
    return RowColumnENACT(32, 4, spec=spec, rngs=nnx.Rngs(3))


def padded_inputs(key, h, w, pad_h, pad_w):
    """Random (row, col, src) of one (h, w) image, and the same image padded to
    (h + pad_h, w + pad_w) with random values in the padding, and its mask."""
    keys = jax.random.split(key, 6)
    small = [jax.random.normal(k, (1, h, w, 32)) for k in keys[:3]]
    big = [jax.random.normal(k, (1, h + pad_h, w + pad_w, 32)).at[:, :h, :w].set(x)
           for k, x in zip(keys[3:], small)]
    mask = jnp.ones((1, h + pad_h, w + pad_w), bool).at[:, :h, :w].set(False)
    return small, big, mask


def test_paper_variant_is_padding_invariant():
    """An image padded (random values in the padding) in a batch with a larger image gives
    the output of the image alone on its pixels: padding is out of the entropy softmax,
    the regions, the pooling and the averages, and each image has its own regions."""
    attn = tiny_module("paper")
    small, big, mask = padded_inputs(jax.random.key(0), 5, 7, 3, 2)
    alone, stats_alone = attn.self_attention(*small, jnp.zeros((1, 5, 7), bool))
    other = [jax.random.normal(jax.random.key(9 + i), (1, 8, 9, 32)) for i in range(3)]
    both = [jnp.concatenate([b, o]) for b, o in zip(big, other)]
    together, stats = attn.self_attention(*both, jnp.concatenate([mask, jnp.zeros_like(mask)]))
    together = np.asarray(together)[:1].reshape(1, 8, 9, 32)[:, :5, :7].reshape(1, 35, 32)
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    assert int(stats.num_clusters[0, 0]) == int(stats_alone.num_clusters[0, 0]) > 1
    assert stats.num_valid.tolist() == [35, 72]


def test_released_variant_ignores_padding_as_released():
    attn = tiny_module("released")
    small, big, mask = padded_inputs(jax.random.key(1), 5, 7, 3, 2)
    alone, _ = attn.self_attention(*small, None)
    padded, _ = attn.self_attention(*big, mask)
    padded = np.asarray(padded).reshape(1, 8, 9, 32)[:, :5, :7].reshape(1, 35, 32)
    assert rel(padded, np.asarray(alone)) > 1e-3


@pytest.fixture(scope="module")
def tiny_enact_state():
    cfg = tiny_anchor_detr_config(encoder_attention="enact:sigma=1,variant=released")
    shapes = expected_anchor_shapes(build_anchor_detr(cfg, abstract=True))
    assert shapes["transformer.encoder_layers.1.ENACT.W_prob.weight"] == (1, 32)
    return {name: recipe_tensor(name, shape, index, 1)
            for index, (name, shape) in enumerate(sorted(shapes.items()))}


def test_tiny_model_runs_padding_correct_variant_and_counts_flops(tiny_enact_state):
    pixels = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    mask = jnp.zeros((2, 64, 96), bool).at[1, 48:].set(True)
    # the released checkpoint runs with the padding-correct variant too
    for setting in ("enact:sigma=1",):
        model = anchor_detr_from_state(tiny_enact_state, "tiny_c5", encoder_attention=setting)
        out = model(pixels, mask)
        assert out["pred_logits"].shape == (2, 12, 5)
        assert np.isfinite(np.asarray(out["pred_boxes"])).all()
        one_image = [jax.tree.map(lambda x: x[:1] if x.ndim else x, s) for s in out["encoder_stats"]]
        flops = model.flops((64, 96), encoder_stats=one_image)
        exact = build_anchor_detr(tiny_anchor_detr_config(), abstract=True).flops((64, 96))
        assert flops["attention"] == "rcda+" + model.config["encoder_attention"]
        assert 0 < flops["hashing_and_clustering"]
        assert flops["encoder_ffn"] == exact["encoder_ffn"]
        assert flops["encoder_attention"] != exact["encoder_attention"]
        with pytest.raises(ValueError, match="pass encoder_stats"):
            model.flops((64, 96))
