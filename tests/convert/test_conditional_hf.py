"""Hugging Face transformers Conditional DETR checkpoints -> official keys -> our model.

transformers' ConditionalDetrForObjectDetection is built offline (a small native ResNet
backbone, random weights with a fixed seed), converted and compared output to output.
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.convert import CheckpointError
from detr_jax.convert.conditional import load_conditional_detr
from detr_jax.convert.conditional_hf import conditional_official_key, is_hf_conditional_layout
from detr_jax.convert.reader import read_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HEIGHT, WIDTH = 128, 160


def _randomize(model, seed: int) -> None:
    """Well-scaled random weights and BatchNorm statistics (unit-variance queries, gain 2
    on the query and key projections so that attention is far from uniform)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(normal(t.shape, 0.1))
            elif any(s in name for s in ("normalization.", "layer_norm.", "layernorm.")):
                t.copy_(normal(t.shape, 0.1, 1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("query_position_embeddings.weight"):
                t.copy_(normal(t.shape, 1.0))
            elif name.endswith("weight"):
                gain = 2.0 if any(s in name for s in ("q_proj.", "k_proj.", "q_content", "k_content",
                                                      "q_pos", "k_pos")) else 1.0
                t.copy_(normal(t.shape, gain / math.sqrt(t[0].numel())))
            elif name.endswith("bias"):
                t.copy_(normal(t.shape, 0.1))
            else:
                raise AssertionError(f"unhandled entry {name}")


@pytest.fixture(scope="module")
def hf_conditional():
    """(transformers model, its state dict, NCHW pixels, pixel mask, logits, boxes)."""
    from transformers import (ConditionalDetrConfig, ConditionalDetrForObjectDetection,
                              ResNetConfig)

    backbone = ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[32, 64, 128, 256],
                            embedding_size=8, layer_type="bottleneck", out_features=["stage4"])
    config = ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
        d_model=64, encoder_layers=2, decoder_layers=3, encoder_ffn_dim=96, decoder_ffn_dim=96,
        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=12, num_labels=7)
    torch.manual_seed(0)
    model = ConditionalDetrForObjectDetection(config).eval()
    _randomize(model, seed=0)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, HEIGHT, WIDTH)).astype(np.float32)
    pixel_mask = np.ones((2, HEIGHT, WIDTH), np.int64)
    pixel_mask[1, 96:, :] = 0  # second image: 96 x 112, zero-padded bottom/right
    pixel_mask[1, :, 112:] = 0
    pixels[1][:, pixel_mask[1] == 0] = 0.0
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels), pixel_mask=torch.from_numpy(pixel_mask))
    return (model, model.state_dict(), pixels, pixel_mask, out.logits.numpy(),
            out.pred_boxes.numpy())


def _max_diffs(model, hf_conditional):
    _, _, pixels, pixel_mask, logits, boxes = hf_conditional
    out = nnx.jit(lambda m, x, pad: {k: v for k, v in m(x, pad).items()
                                     if k in ("pred_logits", "pred_boxes")})(
        model, jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(pixel_mask == 0))
    assert out["pred_logits"].shape == logits.shape == (2, 12, 7)
    return (float(np.abs(np.asarray(out["pred_logits"]) - logits).max()),
            float(np.abs(np.asarray(out["pred_boxes"]) - boxes).max()))


def test_transformers_state_dict_parity(hf_conditional):
    _, state_dict, *_ = hf_conditional
    assert is_hf_conditional_layout(state_dict)
    model = load_conditional_detr(state_dict)
    cfg = model.config
    assert (cfg["hidden_dim"], cfg["dec_layers"], cfg["num_queries"], cfg["num_classes"]) == (64, 3, 12, 7)
    d_logits, d_boxes = _max_diffs(model, hf_conditional)
    assert d_logits < 1e-4 and d_boxes < 1e-4, (d_logits, d_boxes)


def test_save_pretrained_directory_parity(hf_conditional, tmp_path):
    """``save_pretrained`` writes the hub names (``sa_*``/``ca_*`` projections)."""
    hf_model, *_ = hf_conditional
    path = tmp_path / "pretrained"
    hf_model.save_pretrained(str(path))
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "model.decoder.layers.0.ca_qpos_sine_proj.weight" in keys
    assert "model.decoder.layers.1.encoder_attn.out_proj.weight" in keys
    model = load_conditional_detr(str(path))
    d_logits, d_boxes = _max_diffs(model, hf_conditional)
    assert d_logits < 1e-4 and d_boxes < 1e-4, (d_logits, d_boxes)


def test_parity_detects_swapped_spatial_projections(hf_conditional):
    """The comparison sees one layer's content and spatial key projections exchanged."""
    _, state_dict, *_ = hf_conditional
    swapped = dict(state_dict)
    a = "model.decoder.layers.1.encoder_attn.k_content_proj.weight"
    b = "model.decoder.layers.1.encoder_attn.k_pos_proj.weight"
    swapped[a], swapped[b] = state_dict[b], state_dict[a]
    d_logits, d_boxes = _max_diffs(load_conditional_detr(swapped), hf_conditional)
    assert max(d_logits, d_boxes) > 1e-3


@pytest.mark.parametrize("hf_key,official", [
    ("model.decoder.layers.0.sa_qcontent_proj.weight", "transformer.decoder.layers.0.sa_qcontent_proj.weight"),
    ("model.decoder.layers.2.self_attn.k_pos_proj.bias", "transformer.decoder.layers.2.sa_kpos_proj.bias"),
    ("model.decoder.layers.0.encoder_attn.q_pos_proj.weight", "transformer.decoder.layers.0.ca_qpos_proj.weight"),
    ("model.decoder.layers.3.encoder_attn.q_pos_sine_proj.bias", "transformer.decoder.layers.3.ca_qpos_sine_proj.bias"),
    ("model.decoder.layers.1.encoder_attn.o_proj.weight", "transformer.decoder.layers.1.cross_attn.out_proj.weight"),
    ("model.decoder.layers.1.encoder_attn.out_proj.bias", "transformer.decoder.layers.1.cross_attn.out_proj.bias"),
    ("model.decoder.layers.1.self_attn.o_proj.weight", "transformer.decoder.layers.1.self_attn.out_proj.weight"),
    ("model.decoder.ref_point_head.layers.1.weight", "transformer.decoder.ref_point_head.layers.1.weight"),
    ("model.decoder.query_scale.layers.0.bias", "transformer.decoder.query_scale.layers.0.bias"),
    ("model.decoder.layers.1.self_attn.q_pos_sine_proj.weight", None),  # no such official key
    ("model.encoder.layers.0.self_attn.q_proj.weight", None),  # DETR's renaming handles it
])
def test_conditional_official_key(hf_key, official):
    assert conditional_official_key(hf_key) == official


def test_layout_detection_leaves_detr_and_official_keys_alone():
    detr_hf = {"model.decoder.layers.0.self_attn.o_proj.weight": np.zeros((2, 2), np.float32),
               "model.decoder.layers.0.self_attn.q_proj.weight": np.zeros((2, 2), np.float32)}
    assert not is_hf_conditional_layout(detr_hf)
    official = {"transformer.decoder.ref_point_head.layers.0.weight": np.zeros((2, 2), np.float32)}
    assert not is_hf_conditional_layout(official)


def test_unmappable_key_is_named(hf_conditional):
    _, state_dict, *_ = hf_conditional
    state = {k: v for k, v in state_dict.items()}
    state["model.decoder.layers.0.encoder_attn.extra_proj.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match=r"encoder_attn\.extra_proj\.weight"):
        read_state_dict(state)


def hub_name(official: str) -> list[str]:
    """The transformers hub names (``microsoft/conditional-detr-resnet-50``: timm backbone,
    what ``save_pretrained`` writes) of one official key; in_proj gives three."""
    top = {"input_proj": "model.input_projection", "query_embed": "model.query_position_embeddings",
           "class_embed": "class_labels_classifier", "transformer.decoder.norm": "model.decoder.layernorm"}
    stem, kind = official.rsplit(".", 1)
    if stem in top:
        return [f"{top[stem]}.{kind}"]
    if official.startswith("bbox_embed."):
        return ["bbox_predictor." + official[len("bbox_embed."):]]
    if official.startswith("backbone.0.body."):
        return ["model.backbone.conv_encoder.model." + official[len("backbone.0.body."):]]
    name = "model." + official[len("transformer."):]
    if name.endswith(("in_proj_weight", "in_proj_bias")):
        base, kind = name.rsplit(".in_proj_", 1)
        return [f"{base}.{p}_proj.{kind}" for p in "qkv"]
    layer_names = {".norm1.": ".self_attn_layer_norm.", ".linear1.": ".fc1.",
                   ".linear2.": ".fc2.", ".cross_attn.": ".encoder_attn."}
    layer_names[".norm2."] = (".encoder_attn_layer_norm." if ".decoder." in name
                              else ".final_layer_norm.")
    layer_names[".norm3."] = ".final_layer_norm."
    for old, new in layer_names.items():
        name = name.replace(old, new)
    return [name]


def test_hub_layout_full_coverage():
    """Every key of the official R50 checkpoint, written with the hub's names, comes back
    with its official name and value (the q/k/v rows packed again)."""
    import json
    spec_path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures",
                             "conditional_detr_r50_official", "spec.json")
    with open(spec_path) as f:
        spec = [(k, tuple(s)) for k, s in json.load(f)["state_dict_spec"]]
    rng = np.random.default_rng(0)
    # convolutions get 1x1 kernels: only names and values are checked here, not shapes
    official = {k: rng.standard_normal(s if len(s) < 4 else (s[0], s[1], 1, 1)).astype(np.float32)
                for k, s in spec if not k.endswith("num_batches_tracked")}
    hub = {}
    for key, value in official.items():
        names = hub_name(key)
        parts = np.split(value, len(names)) if len(names) > 1 else [value]
        hub.update(zip(names, parts))
    assert "model.decoder.layers.0.ca_qpos_proj.weight" in hub
    assert "model.backbone.conv_encoder.model.layer4.2.bn3.running_var" in hub
    state, _ = read_state_dict(hub)
    assert set(state) == set(official)
    for key, value in official.items():
        np.testing.assert_array_equal(state[key], value)
