"""Exact softmax attention with key padding through the Pallas TPU flash-attention kernel.

``tpu_flash_attention`` wraps ``jax.experimental.pallas.ops.tpu.flash_attention`` (JAX's
maintained Pallas TPU kernel, forward and backward): q, k and v go to its (B, H, N, Dh)
layout, both sequence lengths are padded to a multiple of 128 (the kernel's lane width and
smallest block), and key padding becomes segment ids: every query row has segment 1, valid
keys segment 1, padded keys (the image's padding and the lengths' padding) segment 0, so a
query attends to the valid keys only. Padded query rows attend to the valid keys like the
others (the XLA path masks keys only) and the length padding is sliced off the output.
Queries arrive scaled (``sm_scale=1``). The kernel never stores the (Nq, Nk) logits:
memory is linear in N forward and backward, and its residuals are q, k, v, the output and
the per-row softmax statistics.

With ``interpret=True`` the same kernels run under Pallas's TPU interpreter
(``pltpu.force_tpu_interpret_mode``) on any backend: slow, for CPU tests. The interpreter
is chosen when a ``pallas_call`` is traced, and a backward pass is traced after the
forward call returns, so the interpreted form is a ``jax.custom_vjp`` whose backward rule
re-runs the library kernel's forward and backward (its VJP) in interpret mode; the
compiled form (TPUs) uses the library's own VJP directly.

Shapes the kernel does not take (value width unequal to the key width, a head width above
128 that is not a multiple of 128) are computed by ``softmax.masked_softmax_attention``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from detr_jax.attention.softmax import masked_softmax_attention

LANES = 128  # the kernel's sequence blocks are multiples of this
MAX_BLOCK = 512


def available() -> bool:
    """Whether the Pallas TPU flash-attention kernel can be imported in this JAX."""
    try:
        from jax.experimental.pallas.ops.tpu import flash_attention  # noqa: F401
    except ImportError:
        return False
    return True


def padded_length(n: int) -> int:
    """``n`` rounded up to the kernel's smallest block (128)."""
    return -(-n // LANES) * LANES


def block_size(n: int) -> int:
    """The largest of 512, 256, 128 that divides ``n`` (a multiple of 128)."""
    block = MAX_BLOCK
    while n % block:
        block //= 2
    return block


def block_sizes(nq: int, nk: int):
    """Forward and backward blocks for padded lengths ``nq`` and ``nk``: one block size
    per sequence (``block_size``), the key block read in one step."""
    from jax.experimental.pallas.ops.tpu.flash_attention import BlockSizes
    bq, bk = block_size(nq), block_size(nk)
    return BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                      block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk,
                      block_q_dkv=bq, block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)


def supported(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether the kernel takes these per-head shapes (q (B, Nq, H, Dh), k (B, Nk, H, Dh),
    v (B, Nk, H, Dv)): Dv == Dh, and Dh at most 128 or a multiple of 128."""
    dh = q.shape[-1]
    return v.shape[-1] == dh and k.shape[-1] == dh and (dh <= LANES or dh % LANES == 0)


def _kernel(q, k, v, kv_segments, sizes):
    """The library kernel on (B, H, N, Dh) inputs; kv_segments (B, Nk) int32 or None."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa
    segments = None
    if kv_segments is not None:
        q_segments = jnp.ones((q.shape[0], q.shape[2]), jnp.int32)
        segments = tpu_fa.SegmentIds(q=q_segments, kv=kv_segments)
    return tpu_fa.flash_attention(q, k, v, segment_ids=segments, sm_scale=1.0,
                                  block_sizes=sizes)


def _interpret_mode():
    from jax.experimental.pallas import tpu as pltpu
    return pltpu.force_tpu_interpret_mode(pltpu.InterpretParams())


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _interpreted(q, k, v, kv_segments, sizes):
    with _interpret_mode():
        return _kernel(q, k, v, kv_segments, sizes)


def _interpreted_fwd(q, k, v, kv_segments, sizes):
    with _interpret_mode():
        out = _kernel(q, k, v, kv_segments, sizes)
    return out, (q, k, v, kv_segments)


def _interpreted_bwd(sizes, residuals, grad):
    q, k, v, kv_segments = residuals
    with _interpret_mode():
        _, vjp = jax.vjp(lambda q, k, v: _kernel(q, k, v, kv_segments, sizes), q, k, v)
        dq, dk, dv = vjp(grad)
    return dq, dk, dv, None


_interpreted.defvjp(_interpreted_fwd, _interpreted_bwd)


def tpu_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        key_padding_mask: jax.Array | None, *, interpret: bool = False
                        ) -> jax.Array:
    """Softmax attention through the Pallas TPU flash-attention kernel.

    Args:
      q: (B, Nq, H, Dh) queries, already scaled.
      k: (B, Nk, H, Dh) keys; v: (B, Nk, H, Dh) values.
      key_padding_mask: (B, Nk) bool, True on padding, or None.
      interpret: run the kernels under the TPU interpreter (any backend; slow).
    Returns:
      (B, Nq, H, Dh), as ``softmax.masked_softmax_attention`` (up to rounding). A row
      whose keys are all padding averages the values of the padded length (the XLA path
      averages the given keys); DETR's images always have valid pixels.
    """
    if not supported(q, k, v):
        return masked_softmax_attention(q, k, v, key_padding_mask)
    nq, nk = q.shape[1], k.shape[1]
    pq, pk = padded_length(nq), padded_length(nk)

    def heads_first(x, n):  # (B, N, H, D) -> (B, H, n, D), zero rows appended
        x = x.transpose(0, 2, 1, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2]), (0, 0)))

    dtype = q.dtype
    qt = heads_first(q, pq)
    kt = heads_first(k.astype(dtype), pk)
    vt = heads_first(v.astype(dtype), pk)
    kv_segments = None
    if key_padding_mask is not None or pk != nk:
        valid = (jnp.ones((q.shape[0], nk), bool) if key_padding_mask is None
                 else ~key_padding_mask.astype(bool))
        kv_segments = jnp.pad(valid, ((0, 0), (0, pk - nk))).astype(jnp.int32)
    sizes = block_sizes(pq, pk)
    if interpret:
        out = _interpreted(qt, kt, vt, kv_segments, sizes)
    else:
        out = _kernel(qt, kt, vt, kv_segments, sizes)
    return out[:, :, :nq].transpose(0, 2, 1, 3)
