"""Exact softmax attention: the encoder attention of the official DETR."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import AttentionSpec, EncoderAttention


class ExactAttention(EncoderAttention):
    """Full softmax attention over all keys (the default ``attend``)."""


@dataclasses.dataclass(frozen=True)
class Exact(AttentionSpec):
    """Spec for exact attention (``--attention exact``)."""

    name = "exact"

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs: nnx.Rngs) -> EncoderAttention:
        del num_layers
        return ExactAttention(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                              backend=backend, rngs=rngs)

    def build_rcda(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
                   dropout: float = 0.0, dtype: Any = None, rngs: nnx.Rngs):
        """Plain RCDA (the official Anchor DETR encoder)."""
        del layer_index, num_layers
        from detr_jax.models.rcda import RowColumnAttention
        return RowColumnAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
