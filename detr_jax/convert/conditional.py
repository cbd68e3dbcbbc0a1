"""Official Conditional DETR checkpoints (Atten4Vis/ConditionalDETR key names) -> NNX model.

The model's parameter paths were chosen so that DETR's key mapping
(:func:`detr_jax.convert.official.official_target`) names every official key: the
backbone and the encoder are DETR's, and the decoder's separate projections
(``sa_qcontent_proj``, ``ca_qpos_sine_proj``, ...), ``self_attn.out_proj``,
``cross_attn.out_proj``, ``query_scale.layers.i`` and ``ref_point_head.layers.i`` keep
their official names. Only layer 0 has ``ca_qpos_proj``.

The released Conditional-DETR-ENACT checkpoints (GSavathrakis/ENACT) hold the same ENACT
encoder modules as the released DETR-ENACT (``W_q/W_k/W_v/W_o/W_prob``); they load with
``enact:sigma=3,variant=released`` unless the caller passes another ENACT setting
(:func:`detr_jax.convert.official.checkpoint_attention`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from detr_jax.convert.errors import CheckpointError, first
from detr_jax.convert.official import (assign_official_state, checkpoint_attention,
                                       expected_official_shapes, infer_config)
from detr_jax.convert.reader import read_state_dict
from detr_jax.convert.recipe import recipe_tensor
from detr_jax.models.build import build_model, unloaded_paths
from detr_jax.models.conditional_detr import ConditionalDETR, conditional_detr_config

_MARKERS = ("transformer.decoder.ref_point_head.", "transformer.decoder.query_scale.",
            ".ca_qpos_sine_proj.")


def is_conditional_detr(state_dict_keys: Iterable[str]) -> bool:
    """True for a Conditional DETR state dict in the official key layout (it has the
    decoder's ``ref_point_head``/``query_scale`` or ``ca_qpos_sine_proj`` keys)."""
    return any(marker in key for key in state_dict_keys for marker in _MARKERS)


def infer_conditional_config(state: Mapping[str, np.ndarray], source: str, *,
                             dilation: bool | None = None, num_heads: int = 8):
    """The Conditional DETR config of an official-layout state dict, read from shapes
    (ResNet depth and width, layers, FFN width, queries, classes). DC5 is not visible in
    the shapes: it comes from ``dilation`` or, when None, "dc5" in ``source``."""
    cfg = infer_config(state, source, dilation=dilation, num_heads=num_heads)
    fields = {key: cfg[key] for key in ("hidden_dim", "num_heads", "enc_layers", "dec_layers",
                                        "ffn_dim", "num_queries")}
    return conditional_detr_config(backbone=cfg.backbone.to_dict(),
                                   num_classes=int(state["class_embed.weight"].shape[0]),
                                   **fields)


def load_conditional_detr(path_or_state_dict: Any, *, encoder_attention=None,
                          dilation: bool | None = None, num_heads: int = 8,
                          dtype: str = "float32") -> ConditionalDETR:
    """Load a Conditional DETR checkpoint into a ready :class:`ConditionalDETR`.

    Args as :func:`detr_jax.load_torch_checkpoint`: an official ``.pth`` file holding
    ``{"model": state_dict}``, a bare state dict, ``.safetensors`` or ``.npz`` of the
    official keys, or a Hugging Face checkpoint (file or directory, read offline).
    Raises CheckpointError naming the file and the first offending keys; nothing is
    half-loaded.
    """
    state, source = read_state_dict(path_or_state_dict)
    return conditional_detr_from_state(state, source, encoder_attention=encoder_attention,
                                       dilation=dilation, num_heads=num_heads, dtype=dtype)


def conditional_detr_from_state(state: Mapping[str, np.ndarray], source: str, *,
                                encoder_attention=None, dilation: bool | None = None,
                                num_heads: int = 8, dtype: str = "float32") -> ConditionalDETR:
    """A ready :class:`ConditionalDETR` from a state dict already read with official keys
    (the output of :func:`detr_jax.convert.reader.read_state_dict`); ``source`` names it
    in errors."""
    if not is_conditional_detr(state):
        raise CheckpointError(f"{source}: not a Conditional DETR checkpoint: no "
                              "transformer.decoder.ref_point_head / query_scale / "
                              f"ca_qpos_sine_proj keys; its first keys are {first(sorted(state), 6)}")
    cfg = infer_conditional_config(state, source, dilation=dilation, num_heads=num_heads)
    spec = checkpoint_attention(state, source, encoder_attention)
    cfg.encoder_attention = spec.to_string()
    cfg.dtype = dtype
    model = build_model(cfg, encoder_attention=spec, abstract=True)
    assign_official_state(model, state, source)
    left = unloaded_paths(model)
    if left:
        raise CheckpointError(f"{source}: model variables not in the checkpoint: "
                              f"{first('.'.join(map(str, p)) for p in left)}")
    return model


def conditional_recipe_state(cfg, seed: int = 1) -> dict[str, np.ndarray]:
    """Recipe-style random weights (:mod:`detr_jax.convert.recipe`) in the official layout
    for any Conditional DETR config, keys in sorted order (for tests and demos)."""
    shapes = expected_official_shapes(build_model(cfg, abstract=True))
    return {name: recipe_tensor(name, shape, index, seed)
            for index, (name, shape) in enumerate(sorted(shapes.items()))}
