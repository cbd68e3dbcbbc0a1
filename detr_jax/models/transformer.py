"""DETR's transformer: encoder with a swappable self-attention, and decoder.

Post-norm by default (the official models); ``pre_norm`` (the official code's
``--pre_norm`` option) normalizes each sub-layer's input instead and adds a final encoder
LayerNorm. Pre-norm keeps each token's own features on the residual path, which matters
when training from scratch: at initialization the post-norm encoder's nearly uniform
attention averages tokens together layer after layer (docs/training.md).

Dropout (training only: a key and ``train=True``): ``dropout`` on every sub-layer's
output and in the FFN, and ``attention_dropout`` on the attention probabilities of the
encoder self-attention, decoder self-attention and cross-attention (the official
``nn.MultiheadAttention(dropout=...)``; see ``detr_jax.attention.backend`` for the kernel
it runs on).

Sequences are (B, N, d) with row-major flattening of the (h, w) feature map, the same
token order as the official ``flatten(2).permute(2, 0, 1)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.attention import AttentionSpec, MultiHeadAttention
from detr_jax.attention.backend import AttentionBackend, resolve_backend

# The official transformer re-initializes every weight matrix with Xavier-uniform.
XAVIER = nnx.initializers.xavier_uniform()


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key; identity when ``rng`` is None or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def encoder_layer_keys(rng: jax.Array | None, index: int
                       ) -> tuple[jax.Array | None, jax.Array | None]:
    """(attention key, dropout key) of encoder layer ``index`` from the encoder's key
    (``split(fold_in(rng, index))``); (None, None) when ``rng`` is None."""
    if rng is None:
        return None, None
    attn_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, index))
    return attn_rng, dropout_rng


def model_backend(cfg) -> AttentionBackend:
    """The attention backend of a model config (fields ``attention_backend`` and
    ``attention_key_splits``, "auto" when absent, and ``attention_training``, "fused" when
    absent), resolved for this platform."""
    return resolve_backend(cfg.get("attention_backend", "auto"),
                           cfg.get("attention_key_splits", "auto"),
                           cfg.get("attention_training", "fused"))


def _keys(rng, count):
    return [None] * count if rng is None else list(jax.random.split(rng, count))


def attention_dropout_rate(cfg) -> float:
    """The attention-probability dropout of a model config: ``attention_dropout``, or
    ``dropout`` when that field is absent or None (the official code drops attention
    weights at the model's dropout rate)."""
    rate = cfg.get("attention_dropout", None)
    return float(cfg.dropout if rate is None else rate)


def _attention_key(dropout_rng, index):
    """The attention-dropout key of a layer's attention ``index`` (None without a key);
    folded from the layer's dropout key so the other dropout keys stay as they were."""
    return None if dropout_rng is None else jax.random.fold_in(dropout_rng, 100 + index)


def layer_norm(d, eps, dtype, rngs):
    return nnx.LayerNorm(d, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


class EncoderLayer(nnx.Module):
    """Encoder layer (post- or pre-norm); ``self_attn`` is whatever the attention spec builds."""

    def __init__(self, cfg, spec: AttentionSpec, layer_index: int, dtype: Any, rngs: nnx.Rngs,
                 backend: AttentionBackend | None = None):
        d = cfg.hidden_dim
        self.self_attn = spec.build(d, cfg.num_heads, layer_index=layer_index,
                                    num_layers=cfg.enc_layers, dtype=dtype,
                                    backend=backend, rngs=rngs)
        self.self_attn.attention_dropout = attention_dropout_rate(cfg)
        self.linear1 = nnx.Linear(d, cfg.ffn_dim, dtype=dtype, kernel_init=XAVIER, rngs=rngs)
        self.linear2 = nnx.Linear(cfg.ffn_dim, d, dtype=dtype, kernel_init=XAVIER, rngs=rngs)
        self.norm1 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.norm2 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.rate = cfg.dropout
        self.pre_norm = bool(cfg.get("pre_norm", False))

    def __call__(self, src, pos, mask, *, attn_rng=None, dropout_rng=None):
        d1, d2, d3 = _keys(dropout_rng, 3)
        a1 = _attention_key(dropout_rng, 0)
        if self.pre_norm:
            normed = self.norm1(src)
            qk = normed + pos
            attended, stats = self.self_attn(qk, qk, normed, mask, attn_rng, dropout_rng=a1)
            src = src + dropout(attended, self.rate, d1)
            hidden = dropout(jax.nn.relu(self.linear1(self.norm2(src))), self.rate, d2)
            return src + dropout(self.linear2(hidden), self.rate, d3), stats
        qk = src + pos
        attended, stats = self.self_attn(qk, qk, src, mask, attn_rng, dropout_rng=a1)
        src = self.norm1(src + dropout(attended, self.rate, d1))
        hidden = dropout(jax.nn.relu(self.linear1(src)), self.rate, d2)
        src = self.norm2(src + dropout(self.linear2(hidden), self.rate, d3))
        return src, stats


class DecoderLayer(nnx.Module):
    """Decoder layer (post- or pre-norm): self-attention, cross-attention to memory, FFN."""

    def __init__(self, cfg, dtype: Any, rngs: nnx.Rngs, backend: AttentionBackend | None = None):
        d = cfg.hidden_dim
        rate = attention_dropout_rate(cfg)
        self.self_attn = MultiHeadAttention(d, cfg.num_heads, dtype=dtype, backend=backend,
                                            attention_dropout=rate, rngs=rngs)
        self.multihead_attn = MultiHeadAttention(d, cfg.num_heads, dtype=dtype,
                                                 backend=backend, attention_dropout=rate,
                                                 rngs=rngs)
        self.linear1 = nnx.Linear(d, cfg.ffn_dim, dtype=dtype, kernel_init=XAVIER, rngs=rngs)
        self.linear2 = nnx.Linear(cfg.ffn_dim, d, dtype=dtype, kernel_init=XAVIER, rngs=rngs)
        self.norm1 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.norm2 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.norm3 = layer_norm(d, cfg.layer_norm_eps, dtype, rngs)
        self.rate = cfg.dropout
        self.pre_norm = bool(cfg.get("pre_norm", False))

    def __call__(self, tgt, memory, query_pos, pos, mask, *, dropout_rng=None):
        d1, d2, d3, d4 = _keys(dropout_rng, 4)
        a1, a2 = _attention_key(dropout_rng, 0), _attention_key(dropout_rng, 1)
        if self.pre_norm:
            normed = self.norm1(tgt)
            qk = normed + query_pos
            attended, _ = self.self_attn(qk, qk, normed, dropout_rng=a1)
            tgt = tgt + dropout(attended, self.rate, d1)
            attended, _ = self.multihead_attn(self.norm2(tgt) + query_pos, memory + pos, memory,
                                              mask, dropout_rng=a2)
            tgt = tgt + dropout(attended, self.rate, d2)
            hidden = dropout(jax.nn.relu(self.linear1(self.norm3(tgt))), self.rate, d3)
            return tgt + dropout(self.linear2(hidden), self.rate, d4)
        qk = tgt + query_pos
        attended, _ = self.self_attn(qk, qk, tgt, dropout_rng=a1)
        tgt = self.norm1(tgt + dropout(attended, self.rate, d1))
        attended, _ = self.multihead_attn(tgt + query_pos, memory + pos, memory, mask,
                                          dropout_rng=a2)
        tgt = self.norm2(tgt + dropout(attended, self.rate, d2))
        hidden = dropout(jax.nn.relu(self.linear1(tgt)), self.rate, d3)
        tgt = self.norm3(tgt + dropout(self.linear2(hidden), self.rate, d4))
        return tgt


class Encoder(nnx.Module):
    """The encoder; ``backend`` None: ``model_backend(cfg)``."""

    def __init__(self, cfg, spec: AttentionSpec, dtype: Any, rngs: nnx.Rngs,
                 backend: AttentionBackend | None = None):
        backend = model_backend(cfg) if backend is None else backend
        self.layers = nnx.List([EncoderLayer(cfg, spec, i, dtype, rngs, backend)
                                for i in range(cfg.enc_layers)])
        if cfg.get("pre_norm", False):  # the official pre-norm encoder ends with a LayerNorm
            self.norm = layer_norm(cfg.hidden_dim, cfg.layer_norm_eps, dtype, rngs)

    def attention_layers(self) -> list:
        """The layers' self-attention modules, in layer order."""
        return [layer.self_attn for layer in self.layers]

    def attention_inputs(self, src, pos, mask, rng) -> list:
        """Per layer, ``(queries, keys, values, key_padding_mask, attn_rng)`` as that layer's
        attention receives them when the encoder runs on ``src``, ``pos`` (B, N, d) and
        ``mask`` (B, N) with key ``rng`` (as ``__call__``, without dropout)."""
        calls = []
        for index, layer in enumerate(self.layers):
            attn_rng = encoder_layer_keys(rng, index)[0]
            normed = layer.norm1(src) if layer.pre_norm else src
            calls.append((normed + pos, normed + pos, normed, mask, attn_rng))
            src, _ = layer(src, pos, mask, attn_rng=attn_rng)
        return calls

    def __call__(self, src, pos, mask, *, rng=None, train=False):
        """src, pos (B, N, d); mask (B, N). Returns memory (B, N, d) and per-layer stats.

        ``rng`` drives the attention variant (for example ACT's hash draws, fresh per
        layer, ``encoder_layer_keys``) and, when ``train``, dropout.
        """
        stats = []
        for index, layer in enumerate(self.layers):
            attn_rng, drop_rng = encoder_layer_keys(rng, index)
            src, layer_stats = layer(src, pos, mask, attn_rng=attn_rng,
                                     dropout_rng=drop_rng if train else None)
            stats.append(layer_stats)
        if hasattr(self, "norm"):
            src = self.norm(src)
        return src, stats


class Decoder(nnx.Module):
    """The decoder; ``backend`` None: ``model_backend(cfg)``."""

    def __init__(self, cfg, dtype: Any, rngs: nnx.Rngs, backend: AttentionBackend | None = None):
        backend = model_backend(cfg) if backend is None else backend
        self.layers = nnx.List([DecoderLayer(cfg, dtype, rngs, backend)
                                for _ in range(cfg.dec_layers)])
        self.norm = layer_norm(cfg.hidden_dim, cfg.layer_norm_eps, dtype, rngs)

    def __call__(self, memory, pos, mask, query_pos, *, rng=None, train=False):
        """Returns every layer's output through the shared final norm: (L, B, Q, d)."""
        batch = memory.shape[0]
        query_pos = jnp.broadcast_to(query_pos[None], (batch, *query_pos.shape)).astype(memory.dtype)
        tgt = jnp.zeros_like(query_pos)
        outputs = []
        for index, layer in enumerate(self.layers):
            drop_rng = jax.random.fold_in(rng, 1000 + index) if (train and rng is not None) else None
            tgt = layer(tgt, memory, query_pos, pos, mask, dropout_rng=drop_rng)
            outputs.append(self.norm(tgt))
        return jnp.stack(outputs)


class Transformer(nnx.Module):
    """Encoder and decoder sharing one attention backend, resolved from the config's
    ``attention_backend`` / ``attention_key_splits`` when built (``backend`` overrides)."""

    def __init__(self, cfg, spec: AttentionSpec, dtype: Any, rngs: nnx.Rngs,
                 backend: AttentionBackend | None = None):
        backend = model_backend(cfg) if backend is None else backend
        self.encoder = Encoder(cfg, spec, dtype, rngs, backend)
        self.decoder = Decoder(cfg, dtype, rngs, backend)
