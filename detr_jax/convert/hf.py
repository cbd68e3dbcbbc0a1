"""Hugging Face transformers DETR checkpoints -> official facebookresearch/detr keys.

Layouts read (all of ``DetrForObjectDetection``; ``DetrModel`` keys, which lack the
``model.`` prefix and the heads, are renamed too but then miss the heads):

* The hub files of ``facebook/detr-resnet-50`` and ``facebook/detr-resnet-50-dc5``
  (``pytorch_model.bin`` / ``model.safetensors``, also what transformers 4.x
  ``save_pretrained`` writes and what transformers 5 writes back on save): a timm ResNet
  backbone under ``model.backbone.conv_encoder.model.`` whose names are those of the
  official backbone (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...),
  separate ``q_proj``/``k_proj``/``v_proj`` and ``out_proj`` linears, ``fc1``/``fc2``,
  ``self_attn_layer_norm``, ``encoder_attn`` (cross-attention), ``encoder_attn_layer_norm``,
  ``final_layer_norm``, ``model.decoder.layernorm``, ``model.input_projection``,
  ``model.query_position_embeddings``, ``class_labels_classifier``, ``bbox_predictor``.
* The transformers-native ResNet backbone (``use_timm_backbone=False``, e.g. the hub
  revision ``no_timm``): ``embedder.embedder.{convolution,normalization}`` for the stem,
  ``encoder.stages.S.layers.B.layer.K.{convolution,normalization}`` for the three
  bottleneck convolutions and ``...shortcut.{convolution,normalization}`` for the
  projection shortcut.
* The in-memory names of transformers 5 (``DetrForObjectDetection.state_dict()``, and
  files saved from it directly): the backbone under ``model.backbone.model.`` (no
  ``conv_encoder``), ``o_proj`` for the attention output projection and ``mlp.fc1`` /
  ``mlp.fc2``; q/k/v stay separate. Either backbone naming may appear under either prefix.

The q/k/v projections are packed into ``in_proj_weight``/``in_proj_bias`` (rows q, k, v).
BatchNorm ``num_batches_tracked`` entries are dropped. The detection part of a
``DetrForSegmentation`` checkpoint (``detr.`` prefix) is renamed too, but its mask head
cannot be mapped: keys that cannot be mapped (a segmentation head, a non-ResNet backbone,
learned position embeddings, another DETR variant) raise ``CheckpointError``.
"""

from __future__ import annotations

import re

import numpy as np

from detr_jax.convert.errors import CheckpointError, first

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# Backbone names below ``backbone.(conv_encoder.)model.``, as (pattern, builder of the
# official name below ``backbone.0.body.``). timm's ResNet uses the torchvision names.
_BACKBONE_RULES = [
    # timm (and official) names
    (r"conv1\.weight", lambda m: "conv1.weight"),
    (rf"bn1\.{_BN}", lambda m: f"bn1.{m[1]}"),
    (r"layer([1-4])\.(\d+)\.conv([1-3])\.weight",
     lambda m: f"layer{m[1]}.{m[2]}.conv{m[3]}.weight"),
    (rf"layer([1-4])\.(\d+)\.bn([1-3])\.{_BN}",
     lambda m: f"layer{m[1]}.{m[2]}.bn{m[3]}.{m[4]}"),
    (r"layer([1-4])\.(\d+)\.downsample\.0\.weight",
     lambda m: f"layer{m[1]}.{m[2]}.downsample.0.weight"),
    (rf"layer([1-4])\.(\d+)\.downsample\.1\.{_BN}",
     lambda m: f"layer{m[1]}.{m[2]}.downsample.1.{m[3]}"),
    # transformers-native ResNet names
    (r"embedder\.embedder\.convolution\.weight", lambda m: "conv1.weight"),
    (rf"embedder\.embedder\.normalization\.{_BN}", lambda m: f"bn1.{m[1]}"),
    (r"encoder\.stages\.([0-3])\.layers\.(\d+)\.layer\.([0-2])\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.weight"),
    (rf"encoder\.stages\.([0-3])\.layers\.(\d+)\.layer\.([0-2])\.normalization\.{_BN}",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (r"encoder\.stages\.([0-3])\.layers\.(\d+)\.shortcut\.convolution\.weight",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (rf"encoder\.stages\.([0-3])\.layers\.(\d+)\.shortcut\.normalization\.{_BN}",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
]
_BACKBONE_RULES = [(re.compile(p), f) for p, f in _BACKBONE_RULES]

# Names inside one transformer layer -> official names; (encoder, decoder).
_LAYER_NAMES = {
    "self_attn_layer_norm": ("norm1", "norm1"),
    "encoder_attn_layer_norm": (None, "norm2"),
    "final_layer_norm": ("norm2", "norm3"),
    "fc1": ("linear1", "linear1"),
    "mlp.fc1": ("linear1", "linear1"),
    "fc2": ("linear2", "linear2"),
    "mlp.fc2": ("linear2", "linear2"),
}
_ATTENTIONS = {"self_attn": ("self_attn", "self_attn"), "encoder_attn": (None, "multihead_attn")}
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}

_LAYER_RE = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")
_ATTN_RE = re.compile(r"(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj|o_proj)")
_BACKBONE_RE = re.compile(r"backbone\.(?:conv_encoder\.)?model\.(.+)")
_HEAD_RE = re.compile(r"(class_labels_classifier|bbox_predictor\.layers\.(\d+))\.(weight|bias)")
_TOP_LEVEL = {
    "input_projection.weight": "input_proj.weight",
    "input_projection.bias": "input_proj.bias",
    "query_position_embeddings.weight": "query_embed.weight",
    "decoder.layernorm.weight": "transformer.decoder.norm.weight",
    "decoder.layernorm.bias": "transformer.decoder.norm.bias",
}

# Names of the conditional / deformable DETR variants, for a clearer error.
_VARIANT_RE = re.compile(r"[qk]_?(content|pos)(_sine)?_proj|sampling_offsets|reference_points|"
                         r"attention_weights|level_embed")

DROP = "<drop>"


def _strip_prefixes(key: str) -> str:
    """Remove the ``detr.`` (DetrForSegmentation) and ``model.`` (base model inside
    DetrForObjectDetection) prefixes; the heads have no ``model.``, DetrModel keys neither."""
    if key.startswith("detr."):
        key = key[len("detr."):]
    if key.startswith("model."):
        key = key[len("model."):]
    return key


def official_key(hf_key: str) -> tuple[str, int | None] | None:
    """Official name of one transformers DETR key, and the q/k/v row block (0, 1, 2) of
    ``in_proj_*`` it fills (None for others). ``(DROP, None)`` for BatchNorm
    ``num_batches_tracked``; None when the key cannot be mapped."""
    rest = _strip_prefixes(hf_key)
    m = _HEAD_RE.fullmatch(rest)
    if m:
        if m[2] is None:
            return f"class_embed.{m[3]}", None
        return f"bbox_embed.layers.{m[2]}.{m[3]}", None
    if rest in _TOP_LEVEL:
        return _TOP_LEVEL[rest], None
    m = _BACKBONE_RE.fullmatch(rest)
    if m:
        for regex, build in _BACKBONE_RULES:
            b = regex.fullmatch(m[1])
            if b:
                name = build(b)
                if name.endswith("num_batches_tracked"):
                    return DROP, None
                return "backbone.0.body." + name, None
        return None
    m = _LAYER_RE.fullmatch(rest)
    if m:
        part, index, inner, kind = m[1], m[2], m[3], m[4]
        which = 0 if part == "encoder" else 1
        prefix = f"transformer.{part}.layers.{index}."
        if inner in _LAYER_NAMES:
            name = _LAYER_NAMES[inner][which]
            return (prefix + f"{name}.{kind}", None) if name else None
        a = _ATTN_RE.fullmatch(inner)
        if a:
            attn = _ATTENTIONS[a[1]][which]
            if attn is None:
                return None
            proj = a[2]
            if proj in ("out_proj", "o_proj"):
                return prefix + f"{attn}.out_proj.{kind}", None
            return prefix + f"{attn}.in_proj_{kind}", _QKV_INDEX[proj[0]]
    return None


def is_hf_layout(state) -> bool:
    """True when some key is a transformers DETR name (DetrForObjectDetection, DetrModel or
    the detection part of DetrForSegmentation). No official DETR key is one."""
    return any(isinstance(key, str) and official_key(key) is not None for key in state)


def _hints(unmapped: list[str]) -> str:
    hints = []
    if any(k.startswith(("mask_head.", "bbox_attention.")) for k in unmapped):
        hints.append("a segmentation mask head (DetrForSegmentation): only object detection "
                     "models are read")
    if any(_BACKBONE_RE.fullmatch(_strip_prefixes(k)) for k in unmapped):
        hints.append("only ResNet backbones (timm or transformers-native names) are read")
    if any("position_embedding" in k for k in unmapped):
        hints.append("learned position embeddings are not supported (DETR uses sine)")
    if any(_VARIANT_RE.search(k) for k in unmapped):
        hints.append("another DETR variant (conditional / deformable DETR), not DETR")
    return f" ({'; '.join(hints)})" if hints else ""


def hf_to_official(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Rename a transformers DETR state dict (numpy arrays) to the official DETR keys.

    Raises CheckpointError naming ``source`` and the first keys that cannot be mapped,
    that map onto the same official key, or q/k/v projections that are incomplete.
    """
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    qkv: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
    unmapped, duplicates = [], []
    for key, value in state.items():
        target = official_key(key)
        if target is None:
            unmapped.append(key)
            continue
        name, block = target
        if name == DROP:
            continue
        if block is None:
            if name in origin:
                duplicates.append(f"{origin[name]} and {key} -> {name}")
                continue
            origin[name] = key
            out[name] = value
        else:
            parts = qkv.setdefault(name, {})
            if block in parts:
                duplicates.append(f"{parts[block][0]} and {key} -> {name}")
                continue
            parts[block] = (key, value)
    if unmapped:
        raise CheckpointError(
            f"{source}: {len(unmapped)} keys of this transformers DETR checkpoint cannot be "
            f"mapped to the official DETR layout: {first(unmapped)}{_hints(unmapped)}")
    if duplicates:
        raise CheckpointError(f"{source}: several transformers keys give one official key: "
                              f"{first(duplicates, 3)}")
    incomplete, mismatched = [], []
    for name, parts in qkv.items():
        if len(parts) != 3:
            have = ", ".join(parts[b][0] for b in sorted(parts))
            incomplete.append(f"{name} (has only {have})")
            continue
        arrays = [np.asarray(parts[b][1]) for b in range(3)]
        if len({a.shape for a in arrays}) != 1:
            mismatched.append(f"{name}: q/k/v shapes {[a.shape for a in arrays]}")
            continue
        out[name] = np.concatenate(arrays, axis=0)
    if incomplete:
        raise CheckpointError(f"{source}: incomplete q/k/v projections for "
                              f"{first(incomplete, 3)}")
    if mismatched:
        raise CheckpointError(f"{source}: q/k/v projections of different shapes: "
                              f"{first(mismatched, 3)}")
    return out
