"""Conditional DETR's decoder (Meng et al. 2021), batch-first.

Each object query carries a reference point ``s = sigmoid(ref_point_head(query_pos))``
(B, Q, 2), fixed for all layers. Every decoder layer has

* self-attention over the queries with separate content and position projections:
  ``q = sa_qcontent(tgt) + sa_qpos(query_pos)``, ``k = sa_kcontent(tgt) + sa_kpos(query_pos)``,
  ``v = sa_v(tgt)``;
* conditional cross-attention: per head, the content part and the spatial part are
  concatenated (so each head is ``2 * d / H`` wide and the logits are scaled by
  ``(2 d / H) ** -0.5``). The spatial query is ``ca_qpos_sine(sine(s) * T)`` with
  ``T = 1`` in layer 0 and ``T = query_scale(output of the previous layer)`` after; the
  spatial key is ``ca_kpos(pos)``. Only layer 0 also adds ``ca_qpos(query_pos)`` to the
  content query and ``ca_kpos(pos)`` to the content key (it alone has ``ca_qpos_proj``);
* the FFN. All sub-layers are post-norm, as in the official code (its pre-norm path does
  not run).

Attention-weight dropout is not applied (as in this package's DETR); residual dropout is.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.attention import masked_softmax_attention
from detr_jax.models.detr import MLP
from detr_jax.models.transformer import XAVIER, _keys, dropout, layer_norm


def reference_sine_embedding(points: jax.Array, num_pos_feats: int = 128,
                             temperature: float = 10000.0) -> jax.Array:
    """Sine embedding of normalized (x, y) points: (..., 2) -> (..., 2 * num_pos_feats).

    Channels are [y (F), x (F)], each interleaving sin (even) and cos (odd) of
    ``coordinate * 2 pi / temperature ** (2 (i // 2) / F)`` (the official
    ``gen_sineembed_for_position``).
    """
    exponent = (2 * (np.arange(num_pos_feats) // 2) / num_pos_feats).astype(np.float32)
    dim_t = jnp.asarray(np.float32(temperature) ** exponent)

    def embed(coordinate):
        p = (coordinate * (2 * math.pi))[..., None] / dim_t
        stacked = jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1)
        return stacked.reshape(*p.shape[:-1], num_pos_feats)

    return jnp.concatenate([embed(points[..., 1]), embed(points[..., 0])], axis=-1)


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``log(x / (1 - x))`` with both clamped to at least ``eps`` (the official form)."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


class ProjectedAttention(nnx.Module):
    """The official decoder ``MultiheadAttention``: no input projections, only ``out_proj``.

    Called with per-head tensors q (B, Nq, H, Dqk), k (B, Nk, H, Dqk), v (B, Nk, H, Dv)
    and a key padding mask (B, Nk) (True = padding) or None; scales q by ``Dqk ** -0.5``
    and returns ``out_proj`` of the concatenated heads, (B, Nq, H * Dv).
    """

    def __init__(self, value_dim: int, dtype: Any, rngs: nnx.Rngs):
        self.out_proj = nnx.Linear(value_dim, value_dim, dtype=dtype, kernel_init=XAVIER,
                                   rngs=rngs)

    def __call__(self, q, k, v, key_padding_mask=None):
        out = masked_softmax_attention(q * (q.shape[-1] ** -0.5), k, v, key_padding_mask)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class ConditionalDecoderLayer(nnx.Module):
    """One post-norm conditional decoder layer; ``first`` gives it ``ca_qpos_proj``."""

    def __init__(self, cfg, first: bool, dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        linear = lambda a=d, b=d: nnx.Linear(a, b, dtype=dtype, kernel_init=XAVIER, rngs=rngs)
        self.sa_qcontent_proj = linear()
        self.sa_qpos_proj = linear()
        self.sa_kcontent_proj = linear()
        self.sa_kpos_proj = linear()
        self.sa_v_proj = linear()
        self.self_attn = ProjectedAttention(d, dtype, rngs)
        self.ca_qcontent_proj = linear()
        if first:
            self.ca_qpos_proj = linear()
        self.ca_kcontent_proj = linear()
        self.ca_kpos_proj = linear()
        self.ca_v_proj = linear()
        self.ca_qpos_sine_proj = linear()
        self.cross_attn = ProjectedAttention(d, dtype, rngs)
        self.linear1 = linear(d, cfg.ffn_dim)
        self.linear2 = linear(cfg.ffn_dim, d)
        self.norm1 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.norm2 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.norm3 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.num_heads = cfg.num_heads
        self.first = first
        self.rate = cfg.dropout

    def heads(self, x):
        """(B, N, d) -> (B, N, H, d / H)."""
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def __call__(self, tgt, memory, query_pos, pos, mask, query_sine_embed, *,
                 dropout_rng=None):
        """tgt, query_pos, query_sine_embed (B, Q, d); memory, pos (B, N, d); mask (B, N)
        True on padding. Returns the new tgt (B, Q, d)."""
        d1, d2, d3, d4 = _keys(dropout_rng, 4)
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        attended = self.self_attn(self.heads(q), self.heads(k), self.heads(self.sa_v_proj(tgt)))
        tgt = self.norm1(tgt + dropout(attended, self.rate, d1))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.first:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = jnp.concatenate([self.heads(q), self.heads(self.ca_qpos_sine_proj(query_sine_embed))],
                            axis=-1)
        k = jnp.concatenate([self.heads(k), self.heads(k_pos)], axis=-1)
        attended = self.cross_attn(q, k, self.heads(self.ca_v_proj(memory)), mask)
        tgt = self.norm2(tgt + dropout(attended, self.rate, d2))
        hidden = dropout(jax.nn.relu(self.linear1(tgt)), self.rate, d3)
        return self.norm3(tgt + dropout(self.linear2(hidden), self.rate, d4))


class ConditionalDecoder(nnx.Module):
    """The decoder stack with ``ref_point_head``, ``query_scale`` and the shared final norm.

    Post-norm layers whatever ``cfg.pre_norm`` says: the official decoder layer runs only
    its post-norm path (its pre-norm one raises ``NotImplementedError``), so the official
    ``--pre_norm`` can only change the encoder, which is DETR's."""

    def __init__(self, cfg, dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        self.layers = nnx.List([ConditionalDecoderLayer(cfg, i == 0, dtype, rngs)
                                for i in range(cfg.dec_layers)])
        self.norm = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.query_scale = MLP((d, d, d), dtype, rngs)
        self.ref_point_head = MLP((d, d, 2), dtype, rngs)
        self.temperature = float(cfg.position_temperature)

    def __call__(self, memory, pos, mask, query_pos, *, rng=None, train=False):
        """memory, pos (B, N, d); mask (B, N); query_pos (Q, d).

        Returns every layer's output through the final norm, (L, B, Q, d), and the
        reference points (B, Q, 2) (normalized x, y).
        """
        batch, d = memory.shape[0], memory.shape[-1]
        query_pos = jnp.broadcast_to(query_pos[None], (batch, *query_pos.shape)).astype(memory.dtype)
        reference = jax.nn.sigmoid(self.ref_point_head(query_pos).astype(jnp.float32))
        sine = reference_sine_embedding(reference, d // 2, self.temperature).astype(memory.dtype)
        output = jnp.zeros_like(query_pos)
        outputs = []
        for index, layer in enumerate(self.layers):
            query_sine = sine if index == 0 else sine * self.query_scale(output)
            drop_rng = jax.random.fold_in(rng, 1000 + index) if (train and rng is not None) else None
            output = layer(output, memory, query_pos, pos, mask, query_sine, dropout_rng=drop_rng)
            outputs.append(self.norm(output))
        return jnp.stack(outputs), reference


class ConditionalTransformer(nnx.Module):
    """Container with DETR's ``encoder`` (built by the caller) and the conditional decoder."""

    def __init__(self, encoder: nnx.Module, decoder: ConditionalDecoder):
        self.encoder = encoder
        self.decoder = decoder
