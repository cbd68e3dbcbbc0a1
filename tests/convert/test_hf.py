"""Hugging Face transformers DETR checkpoints -> official keys -> our model.

The parity tests build transformers' DetrForObjectDetection offline (native ResNet-50
backbone, random weights with a fixed seed), convert it and compare the predictions.
The hub (timm backbone) layout cannot be built without timm, so it is checked by name.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import detr_jax
from detr_jax.convert import hf
from detr_jax.convert.errors import CheckpointError
from detr_jax.convert.reader import read_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPEC = os.path.join(os.path.dirname(detr_jax.__file__), "assets", "detr_r50_dc5_spec.json")
ATOL = 1e-4
HEIGHT, WIDTH = 128, 160


def official_spec() -> dict[str, tuple]:
    with open(SPEC) as f:
        return {k: tuple(s) for k, s in json.load(f)["state_dict_spec"]}


# --------------------------------------------------------------------------- parity


def _randomize(model, seed: int) -> None:
    """Non-trivial weights and BatchNorm statistics that keep the network well scaled."""
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
            elif name.endswith("weight"):  # conv / linear, (out, in, ...)
                gain = 2.0 if (".q_proj." in name or ".k_proj." in name) else 1.0
                t.copy_(normal(t.shape, gain / math.sqrt(t[0].numel())))
            elif name.endswith("bias"):
                t.copy_(normal(t.shape, 0.1))
            else:
                raise AssertionError(f"unhandled entry {name}")


@pytest.fixture(scope="module")
def hf_detr():
    """(transformers model, its state dict, NCHW pixels, pixel mask, logits, boxes)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                            embedding_size=64, layer_type="bottleneck",
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                        backbone_config=backbone, num_labels=91, num_queries=100)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).eval()
    _randomize(model, seed=0)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, HEIGHT, WIDTH)).astype(np.float32)
    pixel_mask = np.ones((2, HEIGHT, WIDTH), np.int64)
    pixel_mask[1, 96:, :] = 0  # second image: 96 x 112, zero-padded bottom/right
    pixel_mask[1, :, 112:] = 0
    pixels[1][:, pixel_mask[1] == 0] = 0.0
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels), pixel_mask=torch.from_numpy(pixel_mask))
    return model, model.state_dict(), pixels, pixel_mask, out.logits.numpy(), out.pred_boxes.numpy()


_PREDICT = None


def _predict(model, pixels_nchw, pixel_mask):
    """Our model on NHWC input; one jitted function for every loaded model (same graph)."""
    global _PREDICT
    import jax.numpy as jnp
    from flax import nnx

    if _PREDICT is None:
        _PREDICT = nnx.jit(lambda m, x, pad: {k: v for k, v in m(x, pad).items()
                                              if k in ("pred_logits", "pred_boxes")})
    out = _PREDICT(model, jnp.asarray(pixels_nchw.transpose(0, 2, 3, 1)),
                   jnp.asarray(pixel_mask == 0))
    return np.asarray(out["pred_logits"]), np.asarray(out["pred_boxes"])


def _max_diffs(model, hf_detr):
    _, _, pixels, pixel_mask, logits, boxes = hf_detr
    ours_logits, ours_boxes = _predict(model, pixels, pixel_mask)
    assert ours_logits.shape == logits.shape == (2, 100, 92)
    assert ours_boxes.shape == boxes.shape == (2, 100, 4)
    return float(np.abs(ours_logits - logits).max()), float(np.abs(ours_boxes - boxes).max())


def test_transformers_state_dict_parity(hf_detr):
    _, state_dict, *_ = hf_detr
    model = detr_jax.load_torch_checkpoint(state_dict)
    assert not model.config["backbone"]["dilation"]
    d_logits, d_boxes = _max_diffs(model, hf_detr)
    assert d_logits < ATOL and d_boxes < ATOL, (d_logits, d_boxes)


def _save(kind: str, state_dict, model, tmp_path) -> str:
    from safetensors.torch import save_file

    if kind == "safetensors file":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    elif kind == "bin file":
        path = tmp_path / "pytorch_model.bin"
        torch.save(state_dict, str(path))
    elif kind == "bin directory":
        path = tmp_path / "checkpoint"
        path.mkdir()
        torch.save(state_dict, str(path / "pytorch_model.bin"))
    else:  # save_pretrained: transformers 5 writes the legacy (hub) names back
        path = tmp_path / "pretrained"
        model.save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["safetensors file", "bin file", "bin directory",
                                  "save_pretrained directory"])
def test_transformers_file_parity(kind, hf_detr, tmp_path):
    hf_model, state_dict, *_ = hf_detr
    path = _save(kind, state_dict, hf_model, tmp_path)
    if kind == "save_pretrained directory":  # really the hub names, not the in-memory ones
        from safetensors import safe_open
        with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
            keys = set(f.keys())
        assert "model.backbone.conv_encoder.model.embedder.embedder.convolution.weight" in keys
        assert "model.encoder.layers.0.self_attn.out_proj.weight" in keys
        assert "model.decoder.layers.0.fc1.weight" in keys
    model = detr_jax.load_torch_checkpoint(path)
    d_logits, d_boxes = _max_diffs(model, hf_detr)
    assert d_logits < ATOL and d_boxes < ATOL, (d_logits, d_boxes)


def test_parity_detects_a_qk_swap(hf_detr):
    """The comparison is sharp enough to see one mis-packed attention (q and k swapped)."""
    _, state_dict, *_ = hf_detr
    swapped = dict(state_dict)
    a, b = ("model.encoder.layers.3.self_attn.q_proj.weight",
            "model.encoder.layers.3.self_attn.k_proj.weight")
    swapped[a], swapped[b] = state_dict[b], state_dict[a]
    d_logits, d_boxes = _max_diffs(detr_jax.load_torch_checkpoint(swapped), hf_detr)
    assert max(d_logits, d_boxes) > 100 * ATOL


# ----------------------------------------------------------------------- key names

# Names of the hub files of facebook/detr-resnet-50(-dc5) (timm backbone; transformers'
# convert_detr_original_pytorch_checkpoint_to_pytorch.py), of the native-ResNet layout
# (convert_detr_to_pytorch.py, hub revision "no_timm") and of transformers 5 in memory.
HUB_NAMES = [
    ("model.backbone.conv_encoder.model.conv1.weight", "backbone.0.body.conv1.weight", None),
    ("model.backbone.conv_encoder.model.bn1.running_var", "backbone.0.body.bn1.running_var", None),
    ("model.backbone.conv_encoder.model.layer1.0.downsample.0.weight",
     "backbone.0.body.layer1.0.downsample.0.weight", None),
    ("model.backbone.conv_encoder.model.layer4.0.downsample.1.bias",
     "backbone.0.body.layer4.0.downsample.1.bias", None),
    ("model.backbone.conv_encoder.model.layer3.5.bn2.running_mean",
     "backbone.0.body.layer3.5.bn2.running_mean", None),
    ("model.backbone.conv_encoder.model.layer2.3.conv3.weight",
     "backbone.0.body.layer2.3.conv3.weight", None),
    ("model.backbone.conv_encoder.model.layer1.0.downsample.1.num_batches_tracked", hf.DROP, None),
    ("model.input_projection.weight", "input_proj.weight", None),
    ("model.input_projection.bias", "input_proj.bias", None),
    ("model.query_position_embeddings.weight", "query_embed.weight", None),
    ("model.encoder.layers.0.self_attn.q_proj.weight",
     "transformer.encoder.layers.0.self_attn.in_proj_weight", 0),
    ("model.encoder.layers.0.self_attn.k_proj.bias",
     "transformer.encoder.layers.0.self_attn.in_proj_bias", 1),
    ("model.encoder.layers.4.self_attn.v_proj.weight",
     "transformer.encoder.layers.4.self_attn.in_proj_weight", 2),
    ("model.encoder.layers.0.self_attn.out_proj.weight",
     "transformer.encoder.layers.0.self_attn.out_proj.weight", None),
    ("model.encoder.layers.2.self_attn_layer_norm.weight",
     "transformer.encoder.layers.2.norm1.weight", None),
    ("model.encoder.layers.2.final_layer_norm.bias",
     "transformer.encoder.layers.2.norm2.bias", None),
    ("model.encoder.layers.5.fc1.bias", "transformer.encoder.layers.5.linear1.bias", None),
    ("model.encoder.layers.5.fc2.weight", "transformer.encoder.layers.5.linear2.weight", None),
    ("model.decoder.layers.1.self_attn.q_proj.bias",
     "transformer.decoder.layers.1.self_attn.in_proj_bias", 0),
    ("model.decoder.layers.5.encoder_attn.v_proj.bias",
     "transformer.decoder.layers.5.multihead_attn.in_proj_bias", 2),
    ("model.decoder.layers.1.encoder_attn.k_proj.weight",
     "transformer.decoder.layers.1.multihead_attn.in_proj_weight", 1),
    ("model.decoder.layers.1.encoder_attn.out_proj.bias",
     "transformer.decoder.layers.1.multihead_attn.out_proj.bias", None),
    ("model.decoder.layers.0.self_attn_layer_norm.bias",
     "transformer.decoder.layers.0.norm1.bias", None),
    ("model.decoder.layers.1.encoder_attn_layer_norm.weight",
     "transformer.decoder.layers.1.norm2.weight", None),
    ("model.decoder.layers.4.final_layer_norm.weight",
     "transformer.decoder.layers.4.norm3.weight", None),
    ("model.decoder.layers.3.fc2.weight", "transformer.decoder.layers.3.linear2.weight", None),
    ("model.decoder.layernorm.bias", "transformer.decoder.norm.bias", None),
    ("class_labels_classifier.weight", "class_embed.weight", None),
    ("bbox_predictor.layers.2.bias", "bbox_embed.layers.2.bias", None),
]
NATIVE_NAMES = [
    ("model.backbone.conv_encoder.model.embedder.embedder.convolution.weight",
     "backbone.0.body.conv1.weight", None),
    ("model.backbone.conv_encoder.model.embedder.embedder.normalization.bias",
     "backbone.0.body.bn1.bias", None),
    ("model.backbone.conv_encoder.model.encoder.stages.0.layers.0.shortcut.convolution.weight",
     "backbone.0.body.layer1.0.downsample.0.weight", None),
    ("model.backbone.conv_encoder.model.encoder.stages.0.layers.0.shortcut.normalization."
     "running_mean", "backbone.0.body.layer1.0.downsample.1.running_mean", None),
    ("model.backbone.conv_encoder.model.encoder.stages.3.layers.2.layer.2.convolution.weight",
     "backbone.0.body.layer4.2.conv3.weight", None),
    ("model.backbone.conv_encoder.model.encoder.stages.2.layers.5.layer.0.normalization.weight",
     "backbone.0.body.layer3.5.bn1.weight", None),
]
TRANSFORMERS5_NAMES = [
    ("model.backbone.model.embedder.embedder.normalization.running_var",
     "backbone.0.body.bn1.running_var", None),
    ("model.backbone.model.encoder.stages.1.layers.3.layer.1.convolution.weight",
     "backbone.0.body.layer2.3.conv2.weight", None),
    ("model.backbone.model.layer2.1.conv2.weight", "backbone.0.body.layer2.1.conv2.weight", None),
    ("model.encoder.layers.0.self_attn.o_proj.weight",
     "transformer.encoder.layers.0.self_attn.out_proj.weight", None),
    ("model.decoder.layers.2.encoder_attn.o_proj.bias",
     "transformer.decoder.layers.2.multihead_attn.out_proj.bias", None),
    ("model.encoder.layers.1.mlp.fc1.weight", "transformer.encoder.layers.1.linear1.weight", None),
    ("model.decoder.layers.0.mlp.fc2.bias", "transformer.decoder.layers.0.linear2.bias", None),
    # DetrModel (no "model." prefix) and the detection part of DetrForSegmentation
    ("encoder.layers.0.self_attn.q_proj.weight",
     "transformer.encoder.layers.0.self_attn.in_proj_weight", 0),
    ("detr.model.input_projection.bias", "input_proj.bias", None),
    ("detr.class_labels_classifier.bias", "class_embed.bias", None),
]


@pytest.mark.parametrize("hf_key,official,block", HUB_NAMES + NATIVE_NAMES + TRANSFORMERS5_NAMES)
def test_official_key(hf_key, official, block):
    assert hf.official_key(hf_key) == (official, block)


def hub_state_dict(spec: dict[str, tuple], marker_qkv: bool = False) -> dict[str, np.ndarray]:
    """A facebook/detr-resnet-50 hub-layout state dict (timm backbone), written out from the
    official keys by the renames of transformers' conversion script."""
    layer_names = {"encoder": {"linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm",
                               "norm2": "final_layer_norm"},
                   "decoder": {"linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm",
                               "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}}
    heads = {"input_proj": "model.input_projection",
             "query_embed": "model.query_position_embeddings",
             "transformer.decoder.norm": "model.decoder.layernorm",
             "class_embed": "class_labels_classifier"}
    state = {}
    for key, shape in spec.items():
        value = np.zeros(shape, np.float32)
        if key.startswith("backbone.0.body."):
            rest = key[len("backbone.0.body."):]
            state["model.backbone.conv_encoder.model." + rest] = value
            if rest.endswith("running_var"):  # the hub files keep some of these counters
                state["model.backbone.conv_encoder.model." + rest.replace(
                    "running_var", "num_batches_tracked")] = np.array(0, np.int64)
            continue
        if key.startswith("transformer.decoder.norm."):
            state[heads["transformer.decoder.norm"] + "." + key.split(".")[-1]] = value
            continue
        if key.startswith("transformer."):
            _, part, _, index, module, *tail = key.split(".")
            prefix = f"model.{part}.layers.{index}."
            if module in ("self_attn", "multihead_attn"):
                attn = "self_attn" if module == "self_attn" else "encoder_attn"
                if tail[0].startswith("in_proj_"):
                    kind = tail[0][len("in_proj_"):]
                    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                        part_shape = (shape[0] // 3,) + shape[1:]
                        fill = float(i + 1) if marker_qkv else 0.0
                        state[f"{prefix}{attn}.{name}.{kind}"] = np.full(
                            part_shape, fill, np.float32)
                else:  # out_proj.weight / out_proj.bias
                    state[f"{prefix}{attn}.{'.'.join(tail)}"] = value
            else:
                state[f"{prefix}{layer_names[part][module]}.{tail[0]}"] = value
            continue
        if key.startswith("bbox_embed."):
            state["bbox_predictor." + key[len("bbox_embed."):]] = value
            continue
        module, param = key.rsplit(".", 1)
        state[f"{heads[module]}.{param}"] = value
    return state


def test_hub_layout_full_coverage():
    spec = official_spec()
    state = hub_state_dict(spec, marker_qkv=True)
    assert any(k.endswith("num_batches_tracked") for k in state)
    assert hf.is_hf_layout(state)
    out = hf.hf_to_official(state, "hub.safetensors")
    assert set(out) == set(spec)
    assert {k: tuple(v.shape) for k, v in out.items()} == spec
    packed = out["transformer.decoder.layers.3.multihead_attn.in_proj_weight"]
    d = packed.shape[1]
    for block in range(3):  # rows q, k, v
        assert np.all(packed[block * d:(block + 1) * d] == block + 1)
    assert np.all(out["transformer.encoder.layers.0.self_attn.in_proj_bias"][d:2 * d] == 2)


def test_is_hf_layout():
    spec = official_spec()
    assert not hf.is_hf_layout(spec)
    assert not hf.is_hf_layout({"conv.weight": 0, "fc.bias": 0})
    for name, _, _ in HUB_NAMES + NATIVE_NAMES + TRANSFORMERS5_NAMES:
        assert hf.is_hf_layout({name: 0}), name


# ------------------------------------------------------------------------- errors


def _small_hf_state() -> dict[str, np.ndarray]:
    return {"model.input_projection.weight": np.zeros((4, 8, 1, 1), np.float32),
            "class_labels_classifier.weight": np.zeros((3, 4), np.float32)}


@pytest.mark.parametrize("bad_key,hint", [
    ("mask_head.lay1.weight", "segmentation"),
    ("bbox_attention.q_linear.weight", "segmentation"),
    ("model.backbone.conv_encoder.model.embeddings.patch_embeddings.projection.weight", "ResNet"),
    ("model.backbone.model.stages.0.blocks.0.conv_dw.weight", "ResNet"),
    ("model.position_embedding.row_embeddings.weight", "position"),
    ("model.decoder.layers.0.ca_qpos_proj.weight", "variant"),
    ("model.encoder.layers.0.self_attn.sampling_offsets.weight", "variant"),
])
def test_unmappable_key_names_key_and_source(bad_key, hint):
    state = _small_hf_state()
    state[bad_key] = np.zeros((4, 4), np.float32)
    with pytest.raises(CheckpointError) as err:
        hf.hf_to_official(state, "ckpt/model.safetensors")
    message = str(err.value)
    assert "ckpt/model.safetensors" in message and bad_key in message and hint in message


def test_unmappable_key_from_file(tmp_path):
    from safetensors.numpy import save_file

    state = _small_hf_state()
    state["mask_head.lay1.weight"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "panoptic.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="mask_head.lay1.weight") as err:
        read_state_dict(str(path))
    assert str(path) in str(err.value)


def test_incomplete_qkv():
    state = _small_hf_state()
    for name in ("q_proj", "k_proj"):
        state[f"model.encoder.layers.0.self_attn.{name}.weight"] = np.zeros((4, 4), np.float32)
    with pytest.raises(CheckpointError, match=r"src\.pt.*incomplete q/k/v.*in_proj_weight"):
        hf.hf_to_official(state, "src.pt")


def test_two_names_for_one_key():
    state = _small_hf_state()
    state["model.encoder.layers.0.fc1.weight"] = np.zeros((8, 4), np.float32)
    state["model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((8, 4), np.float32)
    with pytest.raises(CheckpointError, match="src.pt.*linear1.weight"):
        hf.hf_to_official(state, "src.pt")


def test_detr_model_without_heads_is_refused(hf_detr):
    """A DetrModel (no class/box heads) is renamed, then refused for the missing heads."""
    _, state_dict, *_ = hf_detr
    base = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    with pytest.raises(CheckpointError, match="class_embed"):
        detr_jax.load_torch_checkpoint(base)
