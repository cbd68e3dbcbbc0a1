"""Anchor DETR's transformer: RCDA encoder, anchor-point queries, decoder with shared heads.

Follows the official ``Transformer`` of megvii-research/AnchorDETR with one feature level
(its default), for both of its ``attention_type`` options: "RCDA" (the default; RCDA in
the encoder and the decoder's cross-attention, 1-D row and column position embeddings
through ``adapt_pos1d``) and "nn.MultiheadAttention" (standard attention there, with the
2-D embedding ``adapt_pos2d(pos2posemb2d((x, y)))`` of every feature position; the
encoder's attention is then any encoder attention of :mod:`detr_jax.attention`).
Feature maps stay (B, h, w, d) throughout (row-major, as the official
``permute(0, 2, 3, 1)``). Post-norm layers, LayerNorm eps 1e-5, ReLU FFN.

Queries: ``num_position`` learned anchor points (x, y) in [0, 1) times ``num_pattern``
pattern embeddings; query ``p * num_position + i`` has pattern p and anchor point i.
Every decoder layer uses the same positional queries: ``adapt_pos2d`` of the 2-D sine
embedding of the anchor point in self-attention, ``adapt_pos1d`` of the 1-D embeddings of
its x and y for RCDA's row and column queries. The class and box heads are one module
shared by all decoder layers (the official ``ModuleList`` repeats the same module, so an
official checkpoint stores identical copies under ``class_embed.0..5``); boxes add
``inverse_sigmoid(anchor)`` to the predicted (cx, cy) before the sigmoid. No final
decoder norm.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.attention import MultiHeadAttention
from detr_jax.models.anchor_position import (inverse_sigmoid, mask2pos, pos2posemb1d,
                                             pos2posemb2d)
from detr_jax.models.detr import MLP
from detr_jax.models.rcda import RowColumnAttention
from detr_jax.models.transformer import dropout, encoder_layer_keys, layer_norm, model_backend

RCDA = "RCDA"
ATTENTION_TYPES = (RCDA, "nn.MultiheadAttention")


def _keys(rng, count):
    return [None] * count if rng is None else list(jax.random.split(rng, count))


class FFN(nnx.Module):
    """``norm2(x + linear2(relu(linear1(x))))`` (the official ``FFN`` with its own norm)."""

    def __init__(self, cfg, dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        self.linear1 = nnx.Linear(d, cfg.ffn_dim, dtype=dtype, rngs=rngs)
        self.linear2 = nnx.Linear(cfg.ffn_dim, d, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.rate = cfg.dropout

    def __call__(self, x, rng=None):
        d1, d2 = _keys(rng, 2)
        hidden = dropout(jax.nn.relu(self.linear1(x)), self.rate, d1)
        return self.norm2(x + dropout(self.linear2(hidden), self.rate, d2))


def _flat(x):
    return x.reshape(x.shape[0], -1, x.shape[-1])


class AnchorEncoderLayer(nnx.Module):
    """Self-attention over the feature map, then the FFN. src (B, h, w, d).

    With ``attention_type="RCDA"`` (the default) the attention is the RCDA form the spec
    builds (``spec.build_rcda``: plain RCDA for exact attention, ENACT RCDA for ENACT) with
    row queries/keys ``src + posemb_row`` and column queries/keys ``src + posemb_col``; with
    ``"nn.MultiheadAttention"`` it is the encoder attention the spec builds (exact, ACT,
    K-means, ...) over the h*w tokens with ``q = k = src + posemb_2d``, ``v = src``.
    """

    def __init__(self, cfg, spec, layer_index: int, dtype: Any, rngs: nnx.Rngs, backend=None):
        d = cfg.hidden_dim
        self.rcda = cfg.attention_type == RCDA
        if self.rcda:
            self.self_attn = spec.build_rcda(d, cfg.num_heads, layer_index=layer_index,
                                             num_layers=cfg.enc_layers, dropout=cfg.dropout,
                                             dtype=dtype, rngs=rngs)
        else:
            self.self_attn = spec.build(d, cfg.num_heads, layer_index=layer_index,
                                        num_layers=cfg.enc_layers, dtype=dtype,
                                        backend=backend, rngs=rngs)
        self.norm1 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.ffn = FFN(cfg, dtype, rngs)
        self.rate = cfg.dropout

    def attention_inputs(self, src, mask, pos):
        """The arguments of the (non-RCDA) attention call: (q, k, v (B, N, d), mask (B, N))."""
        qk = _flat(src + pos[2])
        return qk, qk, _flat(src), mask.reshape(mask.shape[0], -1)

    def __call__(self, src, mask, pos, *, attn_rng=None, dropout_rng=None):
        """src (B, h, w, d), mask (B, h, w), pos = (posemb_row (B, w, d), posemb_col
        (B, h, d), posemb_2d (B, h, w, d)), the ones of this attention type set ->
        (src (B, h, w, d), the attention's statistics or None)."""
        d1, ffn_rng, rcda_rng = _keys(dropout_rng, 3)
        batch, h, w, d = src.shape
        if self.rcda:
            row = src + pos[0][:, None, :, :]
            col = src + pos[1][:, :, None, :]
            attended, stats = self.self_attn.self_attention(row, col, src, mask, rcda_rng)
        else:
            attended, stats = self.self_attn(*self.attention_inputs(src, mask, pos), attn_rng)
        src = self.norm1(src + dropout(attended.reshape(batch, h, w, d), self.rate, d1))
        return self.ffn(src, ffn_rng), stats


class AnchorDecoderLayer(nnx.Module):
    """Self-attention among queries (plain multi-head), cross-attention to the memory (RCDA,
    or plain multi-head with ``attention_type="nn.MultiheadAttention"``), FFN; post-norm
    (``norm2`` after self-attention, ``norm1`` after cross-attention)."""

    def __init__(self, cfg, dtype: Any, rngs: nnx.Rngs, backend=None):
        d = cfg.hidden_dim
        self.rcda = cfg.attention_type == RCDA
        self.cross_attn = (RowColumnAttention(d, cfg.num_heads, dropout=cfg.dropout,
                                              dtype=dtype, rngs=rngs) if self.rcda
                           else MultiHeadAttention(d, cfg.num_heads, dtype=dtype,
                                                   backend=backend, rngs=rngs))
        self.norm1 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.self_attn = MultiHeadAttention(d, cfg.num_heads, dtype=dtype, backend=backend,
                                            rngs=rngs)
        self.norm2 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.ffn = FFN(cfg, dtype, rngs)
        self.rate = cfg.dropout

    def __call__(self, tgt, query_pos, query_pos_x, query_pos_y, memory, mask, pos, rng=None):
        """tgt (B, Q, d); query_pos, query_pos_x, query_pos_y (Q, d); memory (B, h, w, d);
        mask (B, h, w); pos as for the encoder layer -> (B, Q, d)."""
        d1, attn_rng, d2, ffn_rng = _keys(rng, 4)
        qk = tgt + query_pos
        attended, _ = self.self_attn(qk, qk, tgt, None)
        tgt = self.norm2(tgt + dropout(attended, self.rate, d1))
        if self.rcda:
            attended = self.cross_attn(tgt + query_pos_x, tgt + query_pos_y,
                                       memory + pos[0][:, None, :, :],
                                       memory + pos[1][:, :, None, :], memory, mask, attn_rng)
        else:
            attended, _ = self.cross_attn(tgt + query_pos, _flat(memory + pos[2]), _flat(memory),
                                          mask.reshape(mask.shape[0], -1))
        tgt = self.norm1(tgt + dropout(attended, self.rate, d2))
        return self.ffn(tgt, ffn_rng)


class AdaptPos(nnx.Module):
    """Linear - ReLU - Linear (the official ``nn.Sequential`` indices 0 and 2)."""

    def __init__(self, d: int, dtype: Any, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.linear2 = nnx.Linear(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.linear2(jax.nn.relu(self.linear1(x)))


class AnchorTransformer(nnx.Module):
    """Encoder, anchor queries, decoder and the shared class/box heads (see module doc)."""

    def __init__(self, cfg, spec, dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        if cfg.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type={cfg.attention_type!r}: choose one of "
                             f"{ATTENTION_TYPES}")
        self.d_model = d
        self.rcda = cfg.attention_type == RCDA
        self.num_pattern = cfg.num_query_pattern
        self.num_position = cfg.num_query_position
        backend = model_backend(cfg)
        self.encoder_layers = nnx.List([AnchorEncoderLayer(cfg, spec, index, dtype, rngs, backend)
                                        for index in range(cfg.enc_layers)])
        self.decoder_layers = nnx.List([AnchorDecoderLayer(cfg, dtype, rngs, backend)
                                        for _ in range(cfg.dec_layers)])
        self.pattern = nnx.Embed(cfg.num_query_pattern, d, rngs=rngs,
                                 embedding_init=nnx.initializers.normal(stddev=1.0))
        self.position = nnx.Embed(cfg.num_query_position, 2, rngs=rngs,
                                  embedding_init=nnx.initializers.uniform(scale=1.0))
        self.adapt_pos2d = AdaptPos(d, dtype, rngs)
        self.adapt_pos1d = AdaptPos(d, dtype, rngs)
        # Focal-loss prior 0.01 on the class bias; box head starts at the anchor with
        # width and height sigmoid(-2), as the official initialization.
        prior = -math.log((1 - 0.01) / 0.01)
        self.class_embed = nnx.Linear(d, cfg.num_classes, dtype=dtype, rngs=rngs,
                                      bias_init=nnx.initializers.constant(prior))
        self.bbox_embed = MLP((d, d, d, 4), dtype, rngs)
        last = self.bbox_embed.layers[-1]
        last.kernel.set_value(jnp.zeros_like(last.kernel.get_value()))
        last.bias.set_value(jnp.array([0.0, 0.0, -2.0, -2.0], jnp.float32))
        self.dtype = dtype

    def position_embeddings(self, mask):
        """Position embeddings of the memory from its padding mask (B, h, w): the triple
        ``(posemb_row (B, w, d), posemb_col (B, h, d), None)`` for RCDA (x and y
        positions), ``(None, None, posemb_2d (B, h, w, d))`` for standard attention."""
        pos_col, pos_row = mask2pos(mask)
        d = self.d_model
        if self.rcda:
            return (self.adapt_pos1d(pos2posemb1d(pos_row, d).astype(self.dtype)),
                    self.adapt_pos1d(pos2posemb1d(pos_col, d).astype(self.dtype)), None)
        grid = jnp.stack([jnp.broadcast_to(pos_row[:, None, :], mask.shape),
                          jnp.broadcast_to(pos_col[:, :, None], mask.shape)], axis=-1)
        return None, None, self.adapt_pos2d(pos2posemb2d(grid, d // 2).astype(self.dtype))

    def encode(self, src, mask, pos, *, rng=None, train=False):
        """src (B, h, w, d) projected features -> memory (B, h, w, d) after every layer and
        the per-layer attention statistics. Layer i's keys are
        ``encoder_layer_keys(rng, i)`` (attention, dropout), as DETR's encoder; dropout only
        with ``train``."""
        stats = []
        for index, layer in enumerate(self.encoder_layers):
            attn_rng, dropout_rng = encoder_layer_keys(rng, index)
            src, layer_stats = layer(src, mask, pos, attn_rng=attn_rng,
                                     dropout_rng=dropout_rng if train else None)
            stats.append(layer_stats)
        return src, stats

    def anchors(self):
        """Reference points (Q, 2) and initial content queries (Q, d), Q = patterns x
        positions, pattern-major."""
        points = jnp.tile(self.position.embedding[...], (self.num_pattern, 1))
        content = jnp.repeat(self.pattern.embedding[...], self.num_position, axis=0)
        return points, content

    def decode(self, memory, mask, pos, *, rng=None):
        """memory (B, h, w, d) -> logits (L, B, Q, classes), boxes (L, B, Q, 4) per decoder
        layer (cx, cy, w, h in [0, 1])."""
        points, content = self.anchors()
        d = self.d_model
        query_pos = self.adapt_pos2d(pos2posemb2d(points, d // 2).astype(self.dtype))
        query_pos_x = query_pos_y = None
        if self.rcda:
            query_pos_x = self.adapt_pos1d(pos2posemb1d(points[:, 0], d).astype(self.dtype))
            query_pos_y = self.adapt_pos1d(pos2posemb1d(points[:, 1], d).astype(self.dtype))
        tgt = jnp.broadcast_to(content.astype(memory.dtype), (memory.shape[0],) + content.shape)
        reference = inverse_sigmoid(points)
        outputs = []
        for index, layer in enumerate(self.decoder_layers):
            layer_rng = None if rng is None else jax.random.fold_in(rng, index)
            tgt = layer(tgt, query_pos, query_pos_x, query_pos_y, memory, mask, pos, layer_rng)
            outputs.append(tgt)
        hs = jnp.stack(outputs)
        logits = self.class_embed(hs).astype(jnp.float32)
        deltas = self.bbox_embed(hs).astype(jnp.float32)
        deltas = deltas.at[..., :2].add(reference)
        return logits, jax.nn.sigmoid(deltas)
