"""Softmax attention over per-head tensors: the XLA reference and cuDNN's fused kernel.

A leaf module (no imports from the rest of the package): the attention variants, the
fused Pallas kernel (``flash``) and the backend choice (``backend``) all build on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def drop_probabilities(weights: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout of attention probabilities (any shape): each entry is kept with
    probability ``1 - rate`` and divided by it, so the expected weights are unchanged (as
    torch's ``F.dropout`` on ``nn.MultiheadAttention``'s weights). Identity when ``rng``
    is None or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return weights
    keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
    return jnp.where(keep, weights / (1.0 - rate), jnp.zeros_like(weights))


def masked_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_padding_mask: jax.Array | None,
    key_bias: jax.Array | None = None, *, dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Scaled dot-product attention over per-head tensors (XLA ops).

    Args:
      q: (B, Nq, H, Dh) queries, already scaled by ``Dh ** -0.5``.
      k: (B, Nk, H, Dh) keys.
      v: (B, Nk, H, Dv) values.
      key_padding_mask: (B, Nk) bool, True where the key is padding (never attended),
        or None.
      key_bias: optional (B, H, 1 or Nq, Nk) additive logit bias (for example log of
        cluster sizes).
      dropout_rate, dropout_rng: attention dropout (training): the softmax probabilities
        are dropped with ``drop_probabilities``; none when ``dropout_rng`` is None.
    Returns:
      (B, Nq, H, Dv) attention output.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if key_bias is not None:
        logits = logits + key_bias
    if key_padding_mask is not None:
        neg = jnp.finfo(logits.dtype).min
        logits = jnp.where(key_padding_mask[:, None, None, :], neg, logits)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights = drop_probabilities(weights, dropout_rate, dropout_rng).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def mapped_softmax_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_padding_mask: jax.Array | None,
    key_bias: jax.Array | None = None,
) -> jax.Array:
    """:func:`masked_softmax_attention` (same arguments and result, no dropout) computed one
    (image, head) at a time with ``jax.lax.map``.

    The batched einsum materializes (B, H, Nq, Nk) logits, far larger than a CPU's caches
    (150 MB at batch 8 and 768 tokens); one (Nq, Nk) block at a time stays in cache, which
    on CPUs makes exact attention several times faster (``benchmarks/cpu_attention.py``).
    On GPUs and TPUs the sequential map is slower: the backend uses it on CPUs only.
    """
    batch, nq, heads, _ = q.shape
    nk = k.shape[1]

    def rows(x):  # (B, N, H, D) -> (B * H, N, D)
        return x.transpose(0, 2, 1, 3).reshape(batch * heads, x.shape[1], x.shape[3])

    masks = (jnp.zeros((batch, nk), bool) if key_padding_mask is None
             else key_padding_mask.astype(bool))
    masks = jnp.broadcast_to(masks[:, None, :], (batch, heads, nk)).reshape(batch * heads, nk)
    xs = [rows(q), rows(k), rows(v), masks]
    if key_bias is not None:
        bias = jnp.broadcast_to(key_bias, (batch, heads) + key_bias.shape[2:])
        xs.append(bias.reshape((batch * heads,) + key_bias.shape[2:]))

    def one(args):
        qq, kk, vv, mask = args[:4]
        logits = qq @ kk.T
        if key_bias is not None:
            logits = logits + args[4]
        logits = jnp.where(mask[None, :], jnp.finfo(logits.dtype).min, logits)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(vv.dtype)
        return weights @ vv

    out = jax.lax.map(one, tuple(xs))
    return out.reshape(batch, heads, nq, -1).transpose(0, 2, 1, 3)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    key_padding_mask: jax.Array | None) -> jax.Array:
    """The same attention through cuDNN's fused kernel (``jax.nn.dot_product_attention``).

    q (B, Nq, H, Dh) scaled, k/v (B, Nk, H, Dh), key_padding_mask (B, Nk) True on
    padding or None -> (B, Nq, H, Dh). cuDNN takes bf16 and fp16 only (CUDA GPUs);
    float32 inputs go through :func:`masked_softmax_attention`. Padded keys are excluded
    with a (B, 1, 1, Nk) boolean mask (True: attend).
    """
    if q.dtype not in CUDNN_DTYPES:
        return masked_softmax_attention(q, k, v, key_padding_mask)
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        scale=1.0, implementation="cudnn")
