"""The fused attention kernel's backward pass (Pallas Triton), memory linear in N.

``attention_grads`` computes dq, dk, dv of ``flash.flash_attention`` from q, k, v, the
forward pass's output O and its per-row log-sum-exp, without storing any (Nq, Nk) matrix:
the probabilities are recomputed tile by tile, ``P = exp(q k^T - lse)``, and with
attention dropout the keep mask ``Z`` is redrawn from the same hash as in the forward
pass (``flash.dropout_keep``). With ``D = rowsum(dO * O)`` (one XLA reduction),

    dV = (P Z / (1 - rate))^T dO        dP = (dO V^T) Z / (1 - rate)
    dS = P (dP - D)                     dQ = dS K        dK = dS^T Q

(the queries arrive scaled, so S = q k^T). Two kernels: one program per (key block,
image, head) loops over the query blocks and accumulates dK and dV; one program per
(query block, image, head) loops over the key blocks and accumulates dQ. Padded keys get
no probability (no gradient); query rows past ``query_counts`` (and past Nq) load zeros
for dO and D, so they contribute nothing and get a zero dq.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from detr_jax.attention import flash


def _tile_probabilities(q, k, bias, lse2, exp2, precision):
    """P of a (query block, key block) tile from base-2 log-sum-exps ``lse2`` (fp32)."""
    from jax.experimental.pallas import triton as plgpu
    s = plgpu.dot(q, k, trans_b=True, precision=precision).astype(jnp.float32)
    return exp2(s * flash.LOG2E + bias[None, :] - lse2[:, None])


def _grad_kernel(counts_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                 block_q: int, block_k: int, nq: int, nk: int, heads: int, precision,
                 ragged: bool, masked_keys: bool, dropout: float, fast_exp2: bool,
                 for_keys: bool):
    """One program of either kernel: ``for_keys``: dK and dV of one key block (loop over
    the query blocks); else dQ of one query block (loop over the key blocks)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    valid_ref = refs[0] if masked_keys else None
    seed_ref = refs[int(masked_keys)] if dropout else None
    out_refs = refs[int(masked_keys) + int(bool(dropout)):]
    block = pl.program_id(0)
    image, head = pl.program_id(1), pl.program_id(2)
    count = jnp.minimum(counts_ref[image * heads + head], nq) if ragged else nq
    dim = q_ref.shape[-1]
    exp2 = flash.tile_exp2(fast_exp2)
    inv_keep = 1.0 / (1.0 - dropout) if dropout else 1.0

    def load_rows(first):
        rows = first + jnp.arange(block_q)
        ok = rows < count
        span = pl.ds(first, block_q)
        tile = jnp.broadcast_to(ok[:, None], (block_q, dim))
        q = plgpu.load(q_ref.at[span, :], mask=tile, other=0.0)
        do = plgpu.load(do_ref.at[span, :], mask=tile, other=0.0)
        # rows that do not count: lse 0 and D 0 with q = dO = 0 give P = 1 on valid keys
        # and dP = dS = 0, so they add nothing
        lse2 = plgpu.load(lse_ref.at[span], mask=ok, other=0.0) * flash.LOG2E
        delta = plgpu.load(delta_ref.at[span], mask=ok, other=0.0)
        return rows, q, do, lse2, delta

    def load_keys(first):
        return (first + jnp.arange(block_k),
                *flash.load_key_tile(k_ref, v_ref, valid_ref, first, block_k, nk))

    def tile_grads(rows, q, do, lse2, delta, cols, k, v, bias):
        """(P Z / (1 - rate), dS) of one tile, fp32."""
        p = _tile_probabilities(q, k, bias, lse2, exp2, precision)
        dp = plgpu.dot(do, v, trans_b=True, precision=precision).astype(jnp.float32)
        pz = p
        if dropout:
            keep = flash.dropout_keep(seed_ref[0], image * heads + head, rows, cols, nk, dropout)
            pz = jnp.where(keep, p, 0.0) * inv_keep
            dp = jnp.where(keep, dp, 0.0) * inv_keep
        return pz, p * (dp - delta[:, None])

    if for_keys:
        dk_ref, dv_ref = out_refs
        cols, k, v, bias = load_keys(block * block_k)

        def body(j, carry):
            dk, dv = carry
            rows, q, do, lse2, delta = load_rows(j * block_q)
            pz, ds = tile_grads(rows, q, do, lse2, delta, cols, k, v, bias)
            dv = dv + plgpu.dot(pz.astype(do.dtype), do, trans_a=True,
                                precision=precision).astype(jnp.float32)
            dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True,
                                precision=precision).astype(jnp.float32)
            return dk, dv

        zeros = jnp.zeros((block_k, dim), jnp.float32)
        dk, dv = jax.lax.fori_loop(0, -(-nq // block_q), body, (zeros, zeros))
        store = jnp.broadcast_to((cols < nk)[:, None], (block_k, dim))
        span = pl.ds(block * block_k, block_k)
        plgpu.store(dk_ref.at[span, :], dk.astype(dk_ref.dtype), mask=store)
        plgpu.store(dv_ref.at[span, :], dv.astype(dv_ref.dtype), mask=store)
    else:
        (dq_ref,) = out_refs
        rows, q, do, lse2, delta = load_rows(block * block_q)

        def body(i, dq):
            cols, k, v, bias = load_keys(i * block_k)
            _, ds = tile_grads(rows, q, do, lse2, delta, cols, k, v, bias)
            return dq + plgpu.dot(ds.astype(k.dtype), k, precision=precision).astype(jnp.float32)

        dq = jax.lax.fori_loop(0, -(-nk // block_k), body, jnp.zeros((block_q, dim), jnp.float32))
        store = jnp.broadcast_to((rows < nq)[:, None], (block_q, dim))
        plgpu.store(dq_ref.at[pl.ds(block * block_q, block_q), :], dq.astype(dq_ref.dtype),
                    mask=store)


def attention_grads(q, k, v, key_valid, query_counts, seed, out, lse, grad, *,
                    dropout_rate: float = 0.0, block_q: int = 64, block_k: int = 64,
                    num_warps: int = 4, num_stages: int = 2, interpret: bool = False):
    """(dq, dk, dv) of ``flash.flash_attention`` (no ``query_divisors``).

    Args:
      q (B, Nq, H, Dh) scaled queries, k and v (B, Nk, H, Dh), key_valid (B, Nk) or None,
      query_counts (B, H) or None, seed: int32 (1,) of the forward pass's dropout or None;
      out (B, Nq, H, Dh) the forward output; lse (B, H, Nq) fp32 its rows' log-sum-exp
      over the keys; grad (B, Nq, H, Dh) the output's cotangent; dropout_rate as in the
      forward pass; tiles and Triton options as the forward kernel's.
    Returns:
      dq in q's dtype, dk and dv in k's and v's.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    batch, nq, heads, dim = q.shape
    nk = k.shape[1]
    # D = rowsum(dO * O), fp32, as (B, H, Nq) rows
    delta = jnp.sum(grad.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
    dim_p, (q, k, v, grad) = flash.pad_head_dim(q, k, v, grad)
    grad = grad.astype(q.dtype)
    ragged = query_counts is not None
    counts = flash.row_counts(query_counts, batch, heads)
    precision = flash.kernel_precision(q.dtype, interpret)
    rows = lambda n: pl.BlockSpec((None, n, None, dim_p), lambda i, b, h: (b, 0, h, 0))
    per_row = pl.BlockSpec((None, None, nq), lambda i, b, h: (b, h, 0))
    in_specs = [pl.BlockSpec((counts.shape[0],), lambda i, b, h: (0,)), rows(nq), rows(nk),
                rows(nk), rows(nq), per_row, per_row]
    operands = [counts, q, k, v, grad, lse.astype(jnp.float32), delta]
    if key_valid is not None:
        in_specs.append(pl.BlockSpec((None, nk), lambda i, b, h: (b, 0)))
        operands.append(key_valid.astype(jnp.int32))
    if dropout_rate:
        in_specs.append(pl.BlockSpec((1,), lambda i, b, h: (0,)))
        operands.append(jnp.asarray(seed, jnp.int32).reshape(1))
    kernel = functools.partial(
        _grad_kernel, block_q=block_q, block_k=block_k, nq=nq, nk=nk, heads=heads,
        precision=precision, ragged=ragged, masked_keys=key_valid is not None,
        dropout=float(dropout_rate), fast_exp2=not interpret)
    params = plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    dk, dv = pl.pallas_call(
        functools.partial(kernel, for_keys=True), grid=(-(-nk // block_k), batch, heads),
        in_specs=in_specs, out_specs=[rows(nk), rows(nk)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params, interpret=interpret, name="detr_flash_attention_dkdv",
    )(*operands)
    dq = pl.pallas_call(
        functools.partial(kernel, for_keys=False), grid=(-(-nq // block_q), batch, heads),
        in_specs=in_specs, out_specs=rows(nq), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params, interpret=interpret, name="detr_flash_attention_dq",
    )(*operands)
    if dim_p != dim:
        dq, dk, dv = dq[..., :dim], dk[..., :dim], dv[..., :dim]
    return dq, dk, dv
