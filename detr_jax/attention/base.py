"""The encoder-attention interface and the plain multi-head attention it builds on.

Every encoder self-attention variant (exact, ACT, K-means, ENACT) is an
:class:`EncoderAttention`: an ``nnx.Module`` owning the q/k/v/out projections of one
encoder layer and called as::

    output, stats = attention(queries, keys, values, key_padding_mask, rng)

with ``queries``/``keys`` = ``src + pos`` and ``values`` = ``src`` of shape (B, N, d),
``key_padding_mask`` bool (B, N), True on padding (the official convention), and an
optional PRNG key. ``output`` is (B, N, d); ``stats`` is a dict of arrays describing the
layer (for example the number of prototypes per image and head), empty for exact
attention. Variants differ only in :meth:`MultiHeadAttention.attend`, so they share the
projection parameters and a checkpoint converted once runs with any of them.

A variant is chosen through an :class:`AttentionSpec`, a small immutable description
(``Exact()``, ``ACT(rounds=32)``, ...) whose :meth:`AttentionSpec.build` creates the
module of one encoder layer. The model never names a variant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

Stats = dict[str, jax.Array]


def masked_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_padding_mask: jax.Array | None,
    key_bias: jax.Array | None = None,
) -> jax.Array:
    """Scaled dot-product attention over per-head tensors.

    Args:
      q: (B, Nq, H, Dh) queries, already scaled by ``Dh ** -0.5``.
      k: (B, Nk, H, Dh) keys.
      v: (B, Nk, H, Dv) values.
      key_padding_mask: (B, Nk) bool, True where the key is padding (never attended),
        or None.
      key_bias: optional (B, H, 1 or Nq, Nk) additive logit bias (for example log of
        cluster sizes).
    Returns:
      (B, Nq, H, Dv) attention output.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if key_bias is not None:
        logits = logits + key_bias
    if key_padding_mask is not None:
        neg = jnp.finfo(logits.dtype).min
        logits = jnp.where(key_padding_mask[:, None, None, :], neg, logits)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def count_valid(valid: jax.Array) -> jax.Array:
    """Valid tokens per image for the statistics: (B, N) bool -> (B,) int32.

    The count reads a materialized copy of the mask (``optimization_barrier``). Otherwise
    XLA fuses this small reduction with the position-embedding fusion that reads the same
    padding mask, and runs that whole fusion as a reduction kernel: 0.19 ms per forward
    pass of DETR-DC5 at batch 1 on an H100 (docs/performance.md, session 8).
    """
    return jax.lax.optimization_barrier(valid).sum(axis=-1, dtype=jnp.int32)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention with separate q/k/v/out projections (torch ``nn.MultiheadAttention``).

    The official checkpoints pack q, k, v in ``in_proj_weight`` rows [0:d], [d:2d],
    [2d:3d]; the converter splits them into ``q_proj``, ``k_proj``, ``v_proj``.
    """

    def __init__(self, d_model: int, num_heads: int, *, dtype: Any = None, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        # Xavier-uniform weights, zero biases: the official transformer's initialization.
        linear = lambda: nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs,
                                    kernel_init=nnx.initializers.xavier_uniform())
        self.q_proj = linear()
        self.k_proj = linear()
        self.v_proj = linear()
        self.out_proj = linear()

    def split_heads(self, x: jax.Array) -> jax.Array:
        """(B, N, d) -> (B, N, H, Dh)."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def project(self, queries, keys, values):
        """Per-head projections; queries come back scaled by ``Dh ** -0.5``."""
        q = self.split_heads(self.q_proj(queries)) * (self.head_dim ** -0.5)
        k = self.split_heads(self.k_proj(keys))
        v = self.split_heads(self.v_proj(values))
        return q, k, v

    def attend(self, q, k, v, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        """Per-head attention core: (B, N, H, Dh) tensors in, (B, Nq, H, Dh) out plus stats.

        Variants override this; the default is exact softmax attention (XLA or the fused
        kernel, see ``attention.kernel``).
        """
        del rng
        from detr_jax.attention.kernel import attention_core
        return attention_core(q, k, v, key_padding_mask), {}

    def __call__(self, queries, keys, values, key_padding_mask=None, rng=None):
        q, k, v = self.project(queries, keys, values)
        out, stats = self.attend(q, k, v, key_padding_mask, rng)
        out = out.reshape(*out.shape[:-2], self.d_model)
        return self.out_proj(out), stats


class EncoderAttention(MultiHeadAttention):
    """Base class of every encoder self-attention variant (see the module docstring)."""

    def __init__(self, d_model: int, num_heads: int, *, layer_index: int = 0,
                 dtype: Any = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, dtype=dtype, rngs=rngs)
        self.layer_index = layer_index


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Immutable description of an encoder-attention variant; builds one module per layer."""

    name: ClassVar[str] = "abstract"

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, rngs: nnx.Rngs) -> EncoderAttention:
        raise NotImplementedError

    def to_string(self) -> str:
        """The command-line form of this spec, e.g. ``act:L=32,r=8``."""
        return self.name
