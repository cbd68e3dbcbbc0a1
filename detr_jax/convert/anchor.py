"""Map the official Anchor DETR state dict (megvii-research/AnchorDETR keys) onto
:class:`detr_jax.models.anchor_detr.AnchorDETR`.

Layout of the official checkpoint (``{"model": state_dict}``):
- ``backbone.body.*``: the torchvision ResNet with frozen BatchNorm (DETR's
  ``backbone.0.body.*`` without the ``0``).
- ``input_proj.0.0`` (1x1 conv) and ``input_proj.0.1`` (GroupNorm) for the one level.
- ``transformer.encoder_layers.i.self_attn`` and ``transformer.decoder_layers.i.cross_attn``:
  RCDA with a packed ``in_proj_weight`` (5d, d), rows [0:d] q-row, [d:2d] q-col, [2d:3d]
  k-row, [3d:4d] k-col, [4d:5d] value (``in_proj_bias`` alike), and ``out_proj``.
- ``transformer.decoder_layers.i.self_attn``: ``nn.MultiheadAttention`` (q, k, v packed in
  (3d, d)).
- ``*.ffn.linear1/linear2/norm2``, ``norm1`` (and ``norm2`` in the decoder).
- ``transformer.pattern.weight`` (patterns, d), ``transformer.position.weight`` (anchor
  points, 2), ``transformer.adapt_pos2d.{0,2}``, ``transformer.adapt_pos1d.{0,2}``.
- ``transformer.class_embed.i`` and ``transformer.bbox_embed.i.layers.j`` for every decoder
  layer i: one shared module saved once per layer. Official checkpoints hold identical
  copies; loading takes the last one, which is what torch's ``load_state_dict`` leaves in
  the shared module when the copies differ (as in random test weights).

Linear weights are (out, in) there and (in, out) here, convolutions OIHW there and HWIO
here (helpers of :mod:`detr_jax.convert.official`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.convert.errors import CheckpointError, first
from detr_jax.convert.official import (detect_dilation, from_official, official_target,
                                       to_official_layout, validate_state)
from detr_jax.models.build import set_variables, unloaded_paths
from detr_jax.models.rcda import RCDA_PROJECTIONS

SPEC_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                         "anchor_detr_r50_dc5_spec.json")

_MHA = ("q_proj", "k_proj", "v_proj")
_RENAME = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_SEQUENTIAL = {"linear1": "0", "linear2": "2"}


def is_anchor_detr(state_dict_keys: Iterable[str]) -> bool:
    """True for an official Anchor DETR state dict (it has pattern embeddings and the 1-D
    position MLP, which no other detector of the family has)."""
    keys = set(state_dict_keys)
    return "transformer.pattern.weight" in keys and "transformer.adapt_pos1d.0.weight" in keys


_ENACT_KEY = re.compile(r"transformer\.encoder_layers\.\d+\.ENACT\.W_prob\.weight$")


def anchor_enact_key(state_dict_keys: Iterable[str]) -> str | None:
    """The first key of a released Anchor-DETR-ENACT entropy layer
    (``transformer.encoder_layers.<i>.ENACT.W_prob.weight``), or None."""
    return next((k for k in state_dict_keys if _ENACT_KEY.match(k)), None)


def anchor_checkpoint_attention(state: Mapping[str, Any], source: str, encoder_attention):
    """The encoder-attention spec an Anchor DETR state dict is loaded with:
    ``encoder_attention`` parsed, or, for a checkpoint holding the released ENACT entropy
    layers, ``enact:sigma=5,variant=released`` (the released Anchor-DETR-ENACT computation,
    sigma 5 as released) unless the caller passes an ENACT setting. Any other setting for
    such a checkpoint is a CheckpointError naming the key."""
    from detr_jax.attention import parse_attention
    from detr_jax.attention.enact import ENACT
    key = anchor_enact_key(state)
    if key is None:
        return parse_attention(encoder_attention)
    if encoder_attention is None:
        return ENACT(sigma=5.0, variant="released")
    spec = parse_attention(encoder_attention)
    if not isinstance(spec, ENACT):
        raise CheckpointError(
            f"{source}: holds released Anchor-DETR-ENACT entropy layers ({key}): load it "
            f"with an ENACT setting (default enact:sigma=5,variant=released), not "
            f"{spec.to_string()!r}")
    return spec


def anchor_recipe_state_dict(seed: int | None = None) -> dict[str, np.ndarray]:
    """The recipe weights (:mod:`detr_jax.convert.recipe`) in the official Anchor DETR-DC5
    R50 layout: keys, order, shapes and seed of ``assets/anchor_detr_r50_dc5_spec.json``."""
    from detr_jax.convert.recipe import load_spec, recipe_state_dict
    spec, default_seed = load_spec(SPEC_PATH)
    return recipe_state_dict(spec, default_seed if seed is None else seed)


def anchor_target(path: tuple, dec_layers: int, rcda: bool = True
                  ) -> tuple[list[str], int | None, int]:
    """Official keys of one model parameter, its slot in a packed in-projection and the
    number of slots.

    path: the parameter's path in ``nnx.state(model)``; rcda: the model's attention type is
    RCDA (5 packed projections in the encoder and the cross-attention, else 3). Returns
    ``(keys, slot, slots)``: one key except for the shared heads (one per decoder layer,
    loaded from the last); ``slot`` None when the tensor is not packed, else its row
    block among ``slots``.
    """
    parts = [str(p) for p in path]
    if parts[0] == "backbone":
        key, _ = official_target(path)
        return [re.sub(r"^backbone\.0\.body\.", "backbone.body.", key)], None, 1
    if (len(parts) >= 3 and parts[-2] in RCDA_PROJECTIONS + _MHA
            and parts[-3] in ("self_attn", "cross_attn")):
        packed_rcda = rcda and ("encoder_layers" in parts or parts[-3] == "cross_attn")
        names = RCDA_PROJECTIONS if packed_rcda else _MHA
        leaf = "in_proj_weight" if parts[-1] == "kernel" else "in_proj_bias"
        return [".".join(parts[:-2] + [leaf])], names.index(parts[-2]), len(names)
    parts[-1] = _RENAME.get(parts[-1], parts[-1])
    if len(parts) >= 3 and parts[-2] == "entropy" and parts[-3] == "self_attn":
        # ENACT's entropy layer sits beside the attention in the released checkpoints
        return [".".join(parts[:-3] + ["ENACT", "W_prob", parts[-1]])], None, 1
    if parts[0] == "input_proj":
        parts = ["input_proj", "0", {"conv": "0", "norm": "1"}[parts[1]]] + parts[2:]
    if len(parts) > 2 and parts[1] in ("adapt_pos1d", "adapt_pos2d"):
        parts[2] = _SEQUENTIAL[parts[2]]
    if len(parts) > 2 and parts[1] in ("class_embed", "bbox_embed"):
        return [".".join(parts[:2] + [str(i)] + parts[2:]) for i in range(dec_layers)], None, 1
    return [".".join(parts)], None, 1


def _target(model, path):
    return anchor_target(path, len(model.transformer.decoder_layers), model.transformer.rcda)


def expected_anchor_shapes(model: nnx.Module) -> dict[str, tuple]:
    """Every official key the model needs, with its full official shape."""
    shapes: dict[str, tuple] = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        keys, slot, slots = _target(model, path)
        shape = to_official_layout(tuple(var.get_value().shape), path)
        if slot is not None:
            shape = (shape[0] * slots,) + shape[1:]
        for key in keys:
            shapes[key] = shape
    return shapes


def assign_anchor_state(model: nnx.Module, state: Mapping[str, np.ndarray], source: str) -> None:
    """Validate ``state`` against the model, then load it. Nothing is changed on error."""
    validate_state(state, expected_anchor_shapes(model), source)
    new_values = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        keys, slot, slots = _target(model, path)
        value = np.asarray(state[keys[-1]])
        if slot is not None:
            rows = value.shape[0] // slots
            value = value[slot * rows:(slot + 1) * rows]
        value = from_official(value, path)
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{source}: {keys[-1]} holds non-finite values")
        new_values[path] = jnp.asarray(value, dtype=var.get_value().dtype)
    set_variables(model, new_values)


def _count(keys, pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def anchor_dilation(source: str) -> bool:
    """DC5 for an Anchor DETR file: "dc5" in its path (or a ``config.json`` saying so) ->
    True; a name with "c5" but not "dc5" (``AnchorDETR_r50_c5.pth``) -> False; otherwise
    the official default, DC5."""
    if detect_dilation(source):
        return True
    name = os.path.basename(os.path.normpath(str(source))).lower()
    return not re.search(r"(^|[^d])c5", name)


_REQUIRED = ("backbone.body.conv1.weight", "input_proj.0.0.weight", "transformer.pattern.weight",
             "transformer.position.weight", "transformer.class_embed.0.weight")


def infer_anchor_config(state: Mapping[str, np.ndarray], source: str, *,
                        dilation: bool | None = None, num_heads: int = 8):
    """Read the architecture of an official Anchor DETR state dict from its shapes.

    DC5 is not visible in the shapes: ``dilation``, else :func:`anchor_dilation`.
    The attention type (RCDA or standard) is read from the packed in-projection's rows.
    Raises CheckpointError for the official variants this model does not implement
    (several feature levels, the ``grid`` spatial prior).
    """
    from detr_jax.models.anchor_detr import anchor_detr_config
    keys = list(state)
    if any(k.startswith("transformer.encoder_layers_level.") or k == "transformer.level_embed.weight"
           for k in keys):
        raise CheckpointError(f"{source}: Anchor DETR with several feature levels is not supported")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not an Anchor DETR checkpoint with learned anchor "
                              f"points: missing {first(missing)}")
    d = int(state["transformer.pattern.weight"].shape[1])
    packed = state.get("transformer.decoder_layers.0.cross_attn.in_proj_weight",
                       state.get("transformer.encoder_layers.0.self_attn.in_proj_weight"))
    if packed is None or packed.shape[0] not in (3 * d, 5 * d):
        raise CheckpointError(f"{source}: cannot tell the attention type: expected "
                              f"transformer.decoder_layers.0.cross_attn.in_proj_weight of "
                              f"{5 * d} (RCDA) or {3 * d} (standard) rows")
    attention_type = "RCDA" if packed.shape[0] == 5 * d else "nn.MultiheadAttention"
    stages = tuple(_count(keys, rf"backbone\.body\.layer{s}\.(\d+)\.") for s in range(1, 5))
    if 0 in stages:
        raise CheckpointError(f"{source}: backbone stages with blocks {stages}: expected four "
                              "non-empty ResNet stages (layer1..layer4)")
    ffn = state.get("transformer.encoder_layers.0.ffn.linear1.weight",
                    state.get("transformer.decoder_layers.0.ffn.linear1.weight"))
    if ffn is None:
        raise CheckpointError(f"{source}: missing transformer.*_layers.0.ffn.linear1.weight: "
                              "cannot read the FFN width")
    return anchor_detr_config(
        backbone=dict(stages=stages, width=int(state["backbone.body.conv1.weight"].shape[0]),
                      dilation=anchor_dilation(source) if dilation is None else bool(dilation)),
        hidden_dim=d, num_heads=num_heads,
        enc_layers=_count(keys, r"transformer\.encoder_layers\.(\d+)\."),
        dec_layers=_count(keys, r"transformer\.decoder_layers\.(\d+)\."),
        ffn_dim=int(ffn.shape[0]),
        num_query_position=int(state["transformer.position.weight"].shape[0]),
        num_query_pattern=int(state["transformer.pattern.weight"].shape[0]),
        num_classes=int(state["transformer.class_embed.0.weight"].shape[0]),
        attention_type=attention_type)


def build_anchor_detr(cfg, *, encoder_attention=None, seed: int = 0, abstract: bool = False):
    """An AnchorDETR for ``cfg``; ``abstract=True`` allocates nothing (shapes only)."""
    from detr_jax.models.anchor_detr import AnchorDETR
    make = lambda: AnchorDETR(cfg, encoder_attention=encoder_attention, rngs=nnx.Rngs(seed))
    return nnx.eval_shape(make) if abstract else make()


def load_anchor_detr(path_or_state_dict: Any, *, encoder_attention=None,
                     dilation: bool | None = None, num_heads: int = 8, dtype: str = "float32"):
    """An official Anchor DETR checkpoint (file or state dict, as
    :func:`detr_jax.load_torch_checkpoint` reads) -> a ready AnchorDETR.

    Raises CheckpointError naming the file and the first offending keys; nothing is
    half-loaded.
    """
    from detr_jax.convert.reader import read_state_dict
    state, source = read_state_dict(path_or_state_dict)
    return anchor_detr_from_state(state, source, encoder_attention=encoder_attention,
                                  dilation=dilation, num_heads=num_heads, dtype=dtype)


def anchor_detr_from_state(state: Mapping[str, np.ndarray], source: str, *,
                           encoder_attention=None, dilation: bool | None = None,
                           num_heads: int = 8, dtype: str = "float32"):
    """An already-read official state dict (numpy arrays) -> a ready AnchorDETR.

    encoder_attention: spec or string for the encoder attention (exact when None). RCDA
    encoders take exact or ENACT attention (ENACT RCDA); the "nn.MultiheadAttention" type
    takes any. A checkpoint with the released Anchor-DETR-ENACT entropy layers
    (``transformer.encoder_layers.<i>.ENACT.W_prob``) loads with
    ``enact:sigma=5,variant=released`` when None (see :func:`anchor_checkpoint_attention`).
    """
    cfg = infer_anchor_config(state, source, dilation=dilation, num_heads=num_heads)
    spec = anchor_checkpoint_attention(state, source, encoder_attention)
    cfg.encoder_attention = spec.to_string()
    cfg.dtype = dtype
    model = build_anchor_detr(cfg, encoder_attention=spec, abstract=True)
    assign_anchor_state(model, state, source)
    left = unloaded_paths(model)
    if left:
        raise CheckpointError(f"{source}: model variables not in the checkpoint: "
                              f"{first('.'.join(map(str, p)) for p in left)}")
    return model
