"""Softmax attention over a data-dependent number of key blocks, in plain XLA ops.

``key_block_attention(q, k, v, key_valid, num_keys, block)`` equals
``softmax.masked_softmax_attention`` over the first ``num_keys`` keys (the rest are empty
slots that get no weight) but loops over keys in blocks of ``block`` with the online
softmax (running maximum and normalizer) and stops after ``ceil(num_keys / block)``
blocks. ``num_keys`` is a traced scalar, so one compiled function serves every count:

- work follows the count, as with the capacity ladder, without a ``lax.switch`` (XLA
  gives each switch branch its own temporaries, so under differentiation a ladder costs
  more memory than its largest rung: docs/performance.md, "ENACT training step");
- memory holds one (B, H, Nq, block) tile of logits at a time, never (Nq, Nk), forward
  and backward (a custom VJP recomputes each tile from the saved log-sum-exp, as flash
  attention does);
- training dropout of the probabilities (``dropout_rate``, ``dropout_rng``) draws each
  tile's keep mask from ``fold_in(dropout_rng, tile)``, so the backward pass redraws the
  same masks instead of storing them. The normalizer is the undropped one, as in
  :func:`~detr_jax.attention.softmax.drop_probabilities` (dropout after the softmax).

It is the XLA path (CPU, TPU) of attention over clustered keys (ENACT); on GPUs the
Pallas kernel (``flash.py``) plays this part.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG_INF = -1e30  # finite: a row whose keys are all masked stays finite


def _tile(x: jax.Array, j, block: int) -> jax.Array:
    """Keys j*block .. (j+1)*block of (B, Nk, ...) ``x``."""
    return jax.lax.dynamic_slice_in_dim(x, j * block, block, axis=1)


def _masked_logits(q, k_tile, valid_tile):
    """(B, H, Nq, block) fp32 logits, NEG_INF on invalid keys, and the (B, 1, 1, block) mask."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k_tile, preferred_element_type=jnp.float32)
    valid = valid_tile[:, None, None, :]
    return jnp.where(valid, logits, NEG_INF), valid


def _keep_scale(rate: float, rng_data, j, shape):
    """The dropout factor of tile ``j``: 0 where dropped, ``1 / (1 - rate)`` where kept;
    1.0 without dropout (``rate`` 0)."""
    if not rate:
        return 1.0
    keep = jax.random.bernoulli(jax.random.fold_in(jax.random.wrap_key_data(rng_data), j),
                                1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0)


def _forward(q, k, v, key_valid, num_keys, rng_data, block, rate):
    """-> (output (B, Nq, H, Dv) in v's dtype, log-sum-exp (B, H, Nq) in fp32)."""
    batch, nq, heads, _ = q.shape
    dv = v.shape[-1]
    blocks = (num_keys + block - 1) // block

    def body(j, carry):
        m, l, acc = carry
        logits, valid = _masked_logits(q, _tile(k, j, block), _tile(key_valid, j, block))
        m_new = jnp.maximum(m, logits.max(axis=-1))
        p = jnp.where(valid, jnp.exp(logits - m_new[..., None]), 0.0)
        scale = jnp.exp(m - m_new)
        l = l * scale + p.sum(axis=-1)
        dropped = p * _keep_scale(rate, rng_data, j, p.shape)
        acc = acc * scale[..., None] + jnp.einsum("bhqk,bkhd->bhqd", dropped,
                                                  _tile(v, j, block).astype(jnp.float32))
        return m_new, l, acc

    init = (jnp.full((batch, heads, nq), NEG_INF, jnp.float32), jnp.zeros((batch, heads, nq), jnp.float32),
            jnp.zeros((batch, heads, nq, dv), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, blocks, body, init)
    l = jnp.where(l > 0, l, 1.0)  # rows with no valid key: output 0
    out = (acc / l[..., None]).transpose(0, 2, 1, 3).astype(v.dtype)
    return out, m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attention(q, k, v, key_valid, num_keys, rng_data, block, rate):
    return _forward(q, k, v, key_valid, num_keys, rng_data, block, rate)[0]


def _attention_fwd(q, k, v, key_valid, num_keys, rng_data, block, rate):
    out, lse = _forward(q, k, v, key_valid, num_keys, rng_data, block, rate)
    return out, (q, k, v, key_valid, num_keys, rng_data, out, lse)


def _attention_bwd(block, rate, residuals, grad_out):
    # with dropout Z / (1 - rate) on the probabilities P: dV = (Z P)^T dO / (1 - rate),
    # dP = Z (dO V^T) / (1 - rate), dS = P (dP - rowsum(dO * O)) as without it
    q, k, v, key_valid, num_keys, rng_data, out, lse = residuals
    g = grad_out.astype(jnp.float32).transpose(0, 2, 1, 3)            # (B, H, Nq, Dv)
    delta = jnp.sum(g * out.astype(jnp.float32).transpose(0, 2, 1, 3), axis=-1)  # (B, H, Nq)
    blocks = (num_keys + block - 1) // block

    def body(j, carry):
        dq, dk, dv = carry
        k_tile, v_tile = _tile(k, j, block), _tile(v, j, block)
        logits, valid = _masked_logits(q, k_tile, _tile(key_valid, j, block))
        p = jnp.where(valid, jnp.exp(logits - lse[..., None]), 0.0)
        keep = _keep_scale(rate, rng_data, j, p.shape)
        dv_tile = jnp.einsum("bhqk,bhqd->bkhd", p * keep, g)
        dp = jnp.einsum("bhqd,bkhd->bhqk", g, v_tile.astype(jnp.float32)) * keep
        ds = p * (dp - delta[..., None])
        dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, k_tile.astype(jnp.float32))
        dk_tile = jnp.einsum("bhqk,bqhd->bkhd", ds, q.astype(jnp.float32))
        dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_tile, j * block, axis=1)
        dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_tile, j * block, axis=1)
        return dq, dk, dv

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dq, dk, dv = jax.lax.fori_loop(0, blocks, body, init)
    float0 = lambda x: jnp.zeros(jnp.shape(x), jax.dtypes.float0)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), float0(key_valid),
            float0(num_keys), float0(rng_data))


_attention.defvjp(_attention_fwd, _attention_bwd)


def key_block_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
                        num_keys: jax.Array, *, block: int = 64, dropout_rate: float = 0.0,
                        dropout_rng: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention over the first ``num_keys`` key slots, blockwise.

    Args:
      q: (B, Nq, H, Dh) queries, already scaled; k: (B, Nk, H, Dh); v: (B, Nk, H, Dv).
      key_valid: (B, Nk) bool, False on empty or padded key slots (no weight).
      num_keys: int scalar (traced or not), at most Nk: slots from ``num_keys`` on are
        never read (their ``key_valid`` must be False); 0 gives zeros.
      block: keys per tile; Nk is padded up to a multiple of it.
      dropout_rate, dropout_rng: training dropout of the probabilities (inverted, after the
        softmax); none when ``dropout_rng`` is None or the rate is 0.
    Returns:
      (B, Nq, H, Dv) in v's dtype; rows with no valid key are zero.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape[:3] != k.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"key_block_attention: q {q.shape}, k {k.shape}, v {v.shape} must be "
                         "(B, Nq, H, Dh), (B, Nk, H, Dh), (B, Nk, H, Dv)")
    if block < 1:
        raise ValueError(f"key_block_attention: block={block} must be positive")
    nk = k.shape[1]
    pad = -nk % block
    if pad:
        widths = [(0, 0), (0, pad), (0, 0), (0, 0)]
        k, v = jnp.pad(k, widths), jnp.pad(v, widths)
        key_valid = jnp.pad(key_valid, [(0, 0), (0, pad)])
    num_keys = jnp.clip(jnp.asarray(num_keys, jnp.int32), 0, nk)
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"key_block_attention: dropout_rate={dropout_rate} must be in [0, 1)")
    rate = float(dropout_rate) if dropout_rng is not None else 0.0
    if dropout_rng is None:
        dropout_rng = jax.random.key(0)  # unused: no dropout
    elif not jnp.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key):
        dropout_rng = jax.random.wrap_key_data(dropout_rng)
    return _attention(q, k, v, key_valid.astype(bool), num_keys,
                      jax.random.key_data(dropout_rng), block, rate)
