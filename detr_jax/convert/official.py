"""Map the official DETR state dict (facebookresearch/detr key names) onto the NNX model.

Every model parameter has one official key; linear weights are (out, in) there and
(in, out) here, convolutions OIHW there and HWIO here, and the attention's q/k/v
projections are rows [0:d], [d:2d], [2d:3d] of the packed ``in_proj_weight``/``in_proj_bias``.

The released DETR-ENACT and Conditional-DETR-ENACT checkpoints (GSavathrakis/ENACT)
replace an encoder layer's ``self_attn`` by their own module with separate ``W_q``, ``W_k``,
``W_v``, ``W_o`` linears and the entropy layer ``W_prob``; a model whose encoder layer has an ENACT entropy layer
takes those keys instead (``ENACT_MODULES``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.attention import parse_attention
from detr_jax.attention.enact import ENACT
from detr_jax.convert.errors import CheckpointError, first
from detr_jax.models.build import set_variables
from detr_jax.models.config import model_config

_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}
# Released ENACT attention module names of an encoder layer's projections and entropy layer.
ENACT_MODULES = {"q_proj": "W_q", "k_proj": "W_k", "v_proj": "W_v", "out_proj": "W_o",
                 "entropy": "W_prob"}


def has_enact_modules(state) -> bool:
    """Whether a state dict holds the released ENACT attention (an entropy layer ``W_prob``
    in an encoder layer's ``self_attn``)."""
    return any(k.startswith("transformer.encoder.layers.") and k.endswith(".self_attn.W_prob.weight")
               for k in state)


def checkpoint_attention(state, source: str, encoder_attention):
    """The encoder-attention spec a checkpoint is loaded with: ``encoder_attention`` parsed,
    or, for a checkpoint with the released ENACT modules (DETR-ENACT, Conditional-DETR-ENACT),
    ``enact:sigma=3,variant=released`` (the released computation, sigma 3 as released)
    unless the caller passes an ENACT setting. Any other setting for such a checkpoint is a CheckpointError."""
    if not has_enact_modules(state):
        return parse_attention(encoder_attention)
    if encoder_attention is None:
        return ENACT(sigma=3.0, variant="released")
    spec = parse_attention(encoder_attention)
    if not isinstance(spec, ENACT):
        raise CheckpointError(
            f"{source}: holds released ENACT attention modules (W_q/W_k/W_v/W_o/W_prob in the "
            f"encoder layers): load it with an ENACT setting (default "
            f"enact:sigma=3,variant=released), not {spec.to_string()!r}")
    return spec


def enact_layers(paths) -> frozenset[int]:
    """Indices of the encoder layers whose attention has an ENACT entropy layer, from the
    model's parameter paths."""
    found = set()
    for path in paths:
        parts = [str(p) for p in path]
        if (len(parts) > 5 and parts[:3] == ["transformer", "encoder", "layers"]
                and parts[4] == "self_attn" and parts[5] == "entropy"):
            found.add(int(parts[3]))
    return frozenset(found)


def official_target(path: tuple, enact: frozenset[int] = frozenset()) -> tuple[str, int | None]:
    """Official key of one model parameter and, for q/k/v, the slice index in in_proj.

    path: the parameter's path in ``nnx.state(model)``, e.g.
    ``('transformer', 'encoder', 'layers', 0, 'self_attn', 'q_proj', 'kernel')``.
    enact: encoder layers with ENACT attention (``enact_layers``): their projections and
    entropy layer map to the released ENACT keys (``...self_attn.W_q.weight``, unpacked).
    """
    parts = [str(p) for p in path]
    if (enact and len(parts) == 7 and parts[:3] == ["transformer", "encoder", "layers"]
            and parts[4] == "self_attn" and parts[5] in ENACT_MODULES
            and int(parts[3]) in enact):
        leaf = "weight" if parts[6] == "kernel" else parts[6]
        return ".".join(parts[:5] + [ENACT_MODULES[parts[5]], leaf]), None
    qkv = None
    if len(parts) >= 2 and parts[-2] in _QKV:
        qkv = _QKV[parts[-2]]
        parts = parts[:-2] + ["in_proj_weight" if parts[-1] == "kernel" else "in_proj_bias"]
        return ".".join(parts), qkv
    if parts[0] == "backbone":
        parts = ["backbone", "0", "body"] + parts[1:]
    if "downsample" in parts:
        i = parts.index("downsample")
        parts[i + 1] = {"conv": "0", "bn": "1"}[parts[i + 1]]
    if parts[-1] == "kernel" or (parts[-1] == "scale") or (parts[-1] == "embedding"):
        parts[-1] = "weight"
    return ".".join(parts), qkv


def to_official_layout(array_shape: tuple, path: tuple) -> tuple:
    """Shape the official tensor has for a model parameter of ``array_shape``."""
    if str(path[-1]) == "kernel":
        if len(array_shape) == 4:  # HWIO -> OIHW
            return (array_shape[3], array_shape[2], array_shape[0], array_shape[1])
        if len(array_shape) == 2:
            return (array_shape[1], array_shape[0])
    return tuple(array_shape)


def from_official(value: np.ndarray, path: tuple) -> np.ndarray:
    """Official tensor -> model layout (transposes kernels)."""
    if str(path[-1]) == "kernel":
        if value.ndim == 4:
            return np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 2:
            return value.T
    return value


def expected_official_shapes(model: nnx.Module) -> dict[str, tuple]:
    """Every official key the model needs, with its full official shape."""
    shapes: dict[str, tuple] = {}
    flat = nnx.to_flat_state(nnx.state(model))
    enact = enact_layers(path for path, _ in flat)
    for path, var in flat:
        key, qkv = official_target(path, enact)
        shape = to_official_layout(tuple(var.get_value().shape), path)
        if qkv is not None:
            shape = (shape[0] * 3,) + shape[1:]
        shapes[key] = shape
    return shapes


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def detect_dilation(source: str) -> bool:
    """DC5 for a checkpoint file: a Hugging Face ``config.json`` beside it (``"dilation"``),
    else "dc5" anywhere in its path (hub caches keep the name in a parent directory)."""
    path = str(source)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as f:
                value = json.load(f).get("dilation")
            if isinstance(value, bool):
                return value
        except (OSError, ValueError, AttributeError):
            pass
    return "dc5" in path.lower()


REQUIRED_KEYS = ("class_embed.weight", "query_embed.weight", "input_proj.weight",
                 "backbone.0.body.conv1.weight")


def infer_config(state: Mapping[str, np.ndarray], source: str, *, dilation: bool | None = None,
                 num_heads: int = 8):
    """Read the architecture from tensor shapes: ResNet depth, widths, layers, classes, queries.

    DC5 cannot be seen in the shapes: it comes from ``dilation`` or, when None, from
    "dc5" in ``source`` (the file name).
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{source}: not a DETR checkpoint: missing {first(missing)}; "
            f"its first keys are {first(sorted(state), 6)}")
    keys = list(state)
    stages = tuple(_count(keys, rf"backbone\.0\.body\.layer{s}\.(\d+)\.") for s in range(1, 5))
    if 0 in stages:
        raise CheckpointError(f"{source}: backbone stages with blocks {stages}: expected four "
                              "non-empty ResNet stages (layer1..layer4)")
    query = state["query_embed.weight"]
    classes = state["class_embed.weight"]
    if classes.ndim != 2 or classes.shape[0] < 2:
        raise CheckpointError(f"{source}: class_embed.weight has shape {tuple(classes.shape)}: "
                              "a DETR class head needs at least one class plus 'no object'")
    enc_layers = _count(keys, r"transformer\.encoder\.layers\.(\d+)\.")
    dec_layers = _count(keys, r"transformer\.decoder\.layers\.(\d+)\.")
    ffn_key = ("transformer.encoder.layers.0.linear1.weight" if enc_layers
               else "transformer.decoder.layers.0.linear1.weight")
    if ffn_key not in state:
        raise CheckpointError(f"{source}: missing {ffn_key!r}: cannot read the FFN width")
    if dilation is None:
        dilation = detect_dilation(source)
    return model_config(
        backbone=dict(stages=stages, width=int(state["backbone.0.body.conv1.weight"].shape[0]),
                      dilation=bool(dilation)),
        hidden_dim=int(query.shape[1]), num_heads=num_heads, enc_layers=enc_layers,
        dec_layers=dec_layers, ffn_dim=int(state[ffn_key].shape[0]),
        num_queries=int(query.shape[0]), num_classes=int(classes.shape[0]) - 1)


def validate_state(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str):
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {expected[k]})"
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shapes: {first(wrong, 3)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the DETR model: " + "; ".join(problems))


def assign_official_state(model: nnx.Module, state: Mapping[str, np.ndarray], source: str) -> None:
    """Validate ``state`` against the model, then load it. Nothing is changed on error."""
    validate_state(state, expected_official_shapes(model), source)
    flat = nnx.to_flat_state(nnx.state(model))
    enact = enact_layers(path for path, _ in flat)
    new_values = []
    for path, var in flat:
        key, qkv = official_target(path, enact)
        value = np.asarray(state[key])
        if qkv is not None:
            rows = value.shape[0] // 3
            value = value[qkv * rows:(qkv + 1) * rows]
        value = from_official(value, path)
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{source}: {key} holds non-finite values")
        new_values.append((path, jnp.asarray(value, dtype=var.get_value().dtype)))
    set_variables(model, dict(new_values))
