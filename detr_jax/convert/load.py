"""``load_torch_checkpoint``: official PyTorch (or Hugging Face) weights -> a ready model."""

from __future__ import annotations

from typing import Any

from detr_jax.convert.anchor import anchor_detr_from_state, is_anchor_detr
from detr_jax.convert.conditional import conditional_detr_from_state, is_conditional_detr
from detr_jax.convert.errors import CheckpointError, first
from detr_jax.convert.official import (assign_official_state, checkpoint_attention,  # noqa: F401
                                       has_enact_modules, infer_config)
from detr_jax.convert.reader import read_state_dict
from detr_jax.models.build import build_model, unloaded_paths


def load_torch_checkpoint(path_or_state_dict: Any, *, encoder_attention=None,
                          dilation: bool | None = None, num_heads: int = 8,
                          dtype: str = "float32"):
    """Load an official checkpoint of the DETR family into a ready detector.

    The detector is recognized from the keys (``FAMILIES``; DETR otherwise).

    Args:
      path_or_state_dict: a ``.pth`` file (``{"model": state_dict}``), a bare state dict
        (torch tensors or numpy arrays), a ``.safetensors``/``.npz`` file, or a Hugging Face
        DETR checkpoint (file or directory).
      encoder_attention: an attention spec (``detr_jax.ACT(...)``) or string
        (``"act:L=32"``); exact attention when None, except for checkpoints holding the
        released ENACT modules (``W_q/W_k/W_v/W_o/W_prob`` in the encoder layers, see
        ``checkpoint_attention``).
      dilation: DC5 (dilated last stage). When None: "dc5" in the file name.
      num_heads: attention heads (not visible in tensor shapes; 8 in all official models).
      dtype: compute dtype, ``float32`` or ``bfloat16``.
    Architecture (ResNet-50/101, widths, layers, classes, queries) is read from the shapes.
    Raises CheckpointError naming the file and the first offending keys; nothing is
    half-loaded.
    """
    state, source = read_state_dict(path_or_state_dict)
    from_state = next((load for recognizes, load in FAMILIES if recognizes(state)), detr_from_state)
    return from_state(state, source, encoder_attention=encoder_attention, dilation=dilation,
                      num_heads=num_heads, dtype=dtype)


def detr_from_state(state, source: str, *, encoder_attention=None, dilation: bool | None = None,
                    num_heads: int = 8, dtype: str = "float32"):
    """An already-read official DETR state dict (numpy arrays) -> a ready DETR."""
    cfg = infer_config(state, source, dilation=dilation, num_heads=num_heads)
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


# Detectors other than DETR, recognized from their state dicts' keys:
# (recognizes(state) -> bool, from_state(state, source, **options) -> model). DETR is the
# fallback, so its own checks name what is missing or wrong in a file of none of them.
FAMILIES = (
    (is_anchor_detr, anchor_detr_from_state),
    (is_conditional_detr, conditional_detr_from_state),
)
