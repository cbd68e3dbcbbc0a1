"""Fused (flash) attention for GPUs, written in Pallas (Triton), with ragged query rows.

``flash_attention(q, k, v, key_valid, query_counts)`` computes the same thing as
``softmax.masked_softmax_attention`` without ever storing the (Nq, Nk) logits: every program
of the grid holds ``block_q`` query rows of one (image, head) in registers and streams
the keys and values through them in blocks of ``block_k`` with the online softmax
(running maximum and normalizer). Time and memory grow linearly with the number of query
rows that do work, which is what clustered attention needs:

- ``key_valid`` (B, Nk) masks padded keys (they get no weight).
- ``query_counts`` (B, H) says how many leading query rows of each (image, head) are
  real (ACT's prototype slots are filled from slot 0 up). Query blocks that start past
  the count do no work and write zeros, so a capacity of N costs what the real clusters
  cost: the kernel-level equivalent of the capacity ladder, with no ``lax.switch``.
- ``query_divisors`` (B, H, Nq) divides each query row before use (by at least 1): ACT
  passes its prototype sums and cluster sizes, so the means are formed in the kernel.
- ``key_splits`` S > 1 splits each row's keys into S contiguous ranges, one program each
  (split-K, as in flash decoding): every program writes its range's normalized output
  and log-sum-exp, and a small XLA combination weighs the S partial outputs. A program's
  serial loop is S times shorter, so a small grid (batch 1; the decoder's 100 queries;
  ACT's few prototype blocks) still fills the GPU and time follows the rows that do
  work. ``None`` picks S from the grid size and the device's multiprocessor count
  (``auto_key_splits``); models take it from their ``AttentionBackend``.

Matrix products use TF32 under the default matmul precision and full fp32 under
``jax.default_matmul_precision("highest")`` (the parity setting); bf16 inputs multiply in
bf16 with fp32 accumulation. The backward pass recomputes through the XLA reference, so
the kernel can sit inside a trained model. ``interpret=True`` runs the kernel through
the Pallas interpreter (CPU tests).
"""

from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp

from detr_jax.attention.softmax import masked_softmax_attention

NEG_INF = -1e30  # finite: a block of only masked keys stays finite
LOG2E = 1.4426950408889634  # log2(e): the kernel's softmax runs in base 2
LN2 = 0.6931471805599453
# Attention dropout inside the kernels: each probability's keep bit is a hash of (seed,
# image x head, query row, key column), so the backward pass redraws exactly the forward
# pass's mask without storing it. int32 arithmetic throughout (products wrap, shifts are
# logical), which Triton and XLA compute alike.
_GOLDEN = -1640531527  # 0x9E3779B9 as int32
_MIX = (0x21F0AAAD, 0x735A2D97)  # a 32-bit integer hash's multipliers ("lowbias32")
KEEP_BITS = 24  # keep <=> the hash's top 24 bits < (1 - rate) * 2**24


def _shift_right(x, n: int):
    return jax.lax.shift_right_logical(x, jnp.full_like(x, n))


def _mix32(x):
    """A 32-bit integer hash of int32 ``x`` (elementwise; bijective, well mixed)."""
    x = x ^ _shift_right(x, 16)
    x = x * _MIX[0]
    x = x ^ _shift_right(x, 15)
    x = x * _MIX[1]
    return x ^ _shift_right(x, 15)


def keep_threshold(rate: float) -> int:
    """The integer below which a hash's top ``KEEP_BITS`` bits keep a probability."""
    return int(round((1.0 - rate) * (1 << KEEP_BITS)))


def dropout_keep(seed, image_head, rows, cols, nk: int, rate: float):
    """Keep mask of attention dropout for query ``rows`` x key ``cols``.

    Args:
      seed: int32 scalar; image_head: int32 ``b * heads + h``, a scalar or an array (its
        shape leads the result's); rows (Nr,) and cols (Nc,) int32 indices; nk: the keys
        per row (column stride of the index); rate: the dropout rate.
    Returns:
      bool (*image_head.shape, Nr, Nc), True where the probability is kept (about
      ``1 - rate`` of them).
    """
    stream = _mix32(jnp.asarray(seed, jnp.int32) ^ (jnp.asarray(image_head, jnp.int32) * _GOLDEN))
    index = rows[:, None] * nk + cols[None, :]
    bits = _shift_right(_mix32(index ^ stream[..., None, None]), 32 - KEEP_BITS)
    return bits < keep_threshold(rate)


def _matmul_precision():
    """The DotAlgorithmPreset for the kernel's fp32 products under the current setting."""
    # the public flag reads the value in force, a ``with jax.default_matmul_precision``
    # block included (and the model's ``matmul_precision``, detr_jax.precision)
    setting = jax.config.jax_default_matmul_precision
    if setting in ("highest", "float32", "fp32", "HIGHEST"):
        return jax.lax.DotAlgorithmPreset.F32_F32_F32
    if setting in ("high", "tensorfloat32", "bfloat16_3x"):
        return jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return jax.lax.DotAlgorithmPreset.TF32_TF32_F32


def tile_exp2(fast: bool):
    """The kernels' 2**x of an fp32 tile: with ``fast``, one ``ex2.approx.ftz``
    instruction per element on the GPU (results below 2**-126, weights that cannot matter
    next to the row's largest, flush to 0); else jnp.exp2 (the Pallas interpreter)."""
    if not fast:
        return jnp.exp2
    from jax.experimental.pallas import triton as plgpu

    def exp2(x):
        return plgpu.elementwise_inline_asm(
            "ex2.approx.ftz.f32 $0, $1;", args=[x], constraints="=f,f", pack=1,
            result_shape_dtypes=[jax.ShapeDtypeStruct(x.shape, jnp.float32)])[0]
    return exp2


def load_key_tile(k_ref, v_ref, valid_ref, start, block_k: int, nk: int):
    """(keys, values, logit bias) of the kernels' key tile ``start .. start + block_k``:
    (block_k, Dh) keys and values (zeros past Nk) and a (block_k,) bias, 0 on real keys
    and -inf past Nk or where ``valid_ref`` (None: all valid) is 0."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu
    keys = pl.ds(start, block_k)
    in_range = start + jnp.arange(block_k) < nk
    tile_mask = jnp.broadcast_to(in_range[:, None], (block_k, k_ref.shape[-1]))
    k = plgpu.load(k_ref.at[keys, :], mask=tile_mask, other=0.0)
    v = plgpu.load(v_ref.at[keys, :], mask=tile_mask, other=0.0)
    ok = in_range
    if valid_ref is not None:
        ok = ok & (plgpu.load(valid_ref.at[keys], mask=in_range, other=0) != 0)
    return k, v, jnp.where(ok, 0.0, -jnp.inf)


def _kernel(counts_ref, q_ref, k_ref, v_ref, *refs, block_q: int, block_k: int, nq: int,
            nk: int, blocks_per_split: int, heads: int, splits: int, precision, ragged: bool,
            masked_keys: bool, divided: bool, fast_exp2: bool, dropout: float = 0.0,
            with_lse: bool = False):
    """One program: ``block_q`` query rows of one (image, head) against one key range.

    The refs hold whole unpadded rows ((Nq, Dh) queries, (Nk, Dh) keys and values): tiles
    are read and written with masked loads and stores, so no padded copy of q, k, v is made.
    With ``splits`` > 1 the third grid axis runs over (head, split) pairs and the program
    also writes each row's log-sum-exp of its key range; with ``with_lse`` (one split) it
    writes the row's log-sum-exp over all keys, which the backward kernels need. With
    ``dropout`` > 0 the probabilities that weigh the values are dropped by
    ``dropout_keep`` (the normalizer is the undropped one, as in XLA's dropout after the
    softmax) and the kept ones scaled by 1 / (1 - dropout)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    valid_ref = refs[0] if masked_keys else None
    divisor_ref = refs[int(masked_keys)] if divided else None
    seed_ref = refs[int(masked_keys) + int(divided)] if dropout else None
    o_ref, lse_ref = (refs[-2], refs[-1]) if splits > 1 or with_lse else (refs[-1], None)
    first_row = pl.program_id(0) * block_q  # program ids are read outside conditionals
    head_split = pl.program_id(2)
    head = head_split // splits if splits > 1 else head_split
    first_block = (head_split % splits) * blocks_per_split if splits > 1 else 0
    image_head = pl.program_id(1) * heads + head
    count = counts_ref[image_head] if ragged else nq
    rows = first_row + jnp.arange(block_q)
    row_ok = rows < jnp.minimum(count, nq)
    queries = pl.ds(first_row, block_q)
    dim = q_ref.shape[-1]

    exp2 = tile_exp2(fast_exp2)

    def write(out, lse):
        plgpu.store(o_ref.at[queries, :], out.astype(o_ref.dtype),
                    mask=jnp.broadcast_to((rows < nq)[:, None], out.shape))
        if lse_ref is not None:
            plgpu.store(lse_ref.at[queries], lse, mask=rows < nq)

    def compute():
        q = plgpu.load(q_ref.at[queries, :], mask=jnp.broadcast_to(row_ok[:, None], (block_q, dim)),
                       other=0.0)
        if divisor_ref is not None:
            divisor = plgpu.load(divisor_ref.at[queries], mask=row_ok, other=1.0)
            q = (q.astype(jnp.float32) / jnp.maximum(divisor, 1.0)[:, None]).astype(q.dtype)

        def body(j, carry):
            # m is the running row maximum of the logits in base-2 units (logit * log2 e):
            # the softmax's exponentials are then the GPU's ex2 instruction, where jnp.exp
            # would go through libdevice's accurate expf (several instructions per logit).
            m, l, acc = carry
            start = (first_block + j) * block_k
            # masked keys get -inf: exp2 gives them exactly 0 without a second select,
            # and the running maximum, which starts at the finite NEG_INF, stays finite
            k, v, bias = load_key_tile(k_ref, v_ref, valid_ref, start, block_k, nk)
            s = plgpu.dot(q, k, trans_b=True, precision=precision).astype(jnp.float32)
            s = s * LOG2E + bias[None, :]
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            p = exp2(s - m_new[:, None])
            scale = exp2(m - m_new)
            l = l * scale + jnp.sum(p, axis=1)
            if dropout:
                keep = dropout_keep(seed_ref[0], image_head, rows,
                                    start + jnp.arange(block_k), nk, dropout)
                p = jnp.where(keep, p, 0.0)  # the normalizer l above keeps every weight
            pv = plgpu.dot(p.astype(v.dtype), v, precision=precision).astype(jnp.float32)
            return m_new, l, acc * scale[:, None] + pv

        init = (jnp.full((block_q,), NEG_INF, jnp.float32), jnp.zeros((block_q,), jnp.float32),
                jnp.zeros((block_q, dim), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, blocks_per_split, body, init)
        out = acc / jnp.maximum(l, 1e-30)[:, None]
        if dropout:
            out = out * (1.0 / (1.0 - dropout))
        out = jnp.where(row_ok[:, None], out, 0.0)  # rows past the count: zeros
        # a range of only masked keys gets no weight in the combination; the log-sum-exp
        # goes back to natural units
        write(out, jnp.where(l > 0, (m + jnp.log2(jnp.maximum(l, 1e-30))) * LN2, NEG_INF))

    if not ragged:
        compute()
        return
    busy = first_row < count
    pl.when(busy)(compute)

    @pl.when(jnp.logical_not(busy))
    def _():
        write(jnp.zeros((block_q, dim), jnp.float32), jnp.full((block_q,), NEG_INF, jnp.float32))


# Split-K heuristic: grow the splits (powers of 2) until the grid has this many programs
# per multiprocessor, keeping at least MIN_BLOCKS_PER_SPLIT key blocks per program.
PROGRAMS_PER_CORE = 8
MIN_BLOCKS_PER_SPLIT = 4
DEFAULT_CORES = 132  # an H100 SXM; used when the device does not report its count


def auto_key_splits(programs: int, key_blocks: int, cores: int | None = None) -> int:
    """Key splits S (a power of 2) for a grid of ``programs`` query blocks and rows.

    S doubles while the grid has fewer than ``PROGRAMS_PER_CORE`` programs per
    multiprocessor and every split keeps at least ``MIN_BLOCKS_PER_SPLIT`` key blocks.
    A full grid (DC5 encoder at batch 8: 3840 programs) keeps S = 1; the batch-1 encoder
    (480 programs) gets 4 and the decoder's cross-attention (16 programs) 8.
    """
    if cores is None:
        cores = getattr(jax.devices()[0], "core_count", None) or DEFAULT_CORES
    splits = 1
    while (programs * splits < PROGRAMS_PER_CORE * cores
           and key_blocks // (2 * splits) >= MIN_BLOCKS_PER_SPLIT):
        splits *= 2
    return splits


def combine_splits(partial: jax.Array, lse: jax.Array) -> jax.Array:
    """Merge per-range attention outputs into the output over all keys.

    Args:
      partial: (S, B, Nq, H, D) each key range's softmax-normalized output (fp32).
      lse: (S, B, H, Nq) each range's log-sum-exp of the logits (``NEG_INF``: no key).
    Returns:
      (B, Nq, H, D) fp32, ``sum_s w_s partial_s / sum_s w_s`` with ``w_s = exp(lse_s -
      max lse)``; rows without any valid key come out as zeros (every partial is zero).
    """
    lse = lse.transpose(0, 1, 3, 2)  # (S, B, Nq, H)
    weights = jnp.exp(lse - jnp.max(lse, axis=0, keepdims=True))
    total = jnp.sum(weights, axis=0)
    return jnp.sum(weights[..., None] * partial, axis=0) / total[..., None]


def pad_head_dim(*arrays):
    """(Dh padded to a power of 2 >= 16, the (B, N, H, Dh) arrays zero-padded to it): the
    kernels' tiles need a power-of-2 head dim."""
    dim = arrays[0].shape[-1]
    dim_p = max(16, 1 << (dim - 1).bit_length())
    if dim_p == dim:
        return dim, arrays
    return dim_p, tuple(jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, dim_p - dim))) for x in arrays)


def row_counts(query_counts, batch: int, heads: int):
    """The kernels' per-(image, head) query counts, int32, padded to a power-of-2 length
    (one unused zero when ``query_counts`` is None)."""
    counts = (query_counts.astype(jnp.int32).reshape(batch * heads) if query_counts is not None
              else jnp.zeros((1,), jnp.int32))
    return jnp.pad(counts, (0, (1 << max(counts.shape[0] - 1, 0).bit_length()) - counts.shape[0]))


def kernel_precision(dtype, interpret: bool):
    """The kernels' matrix-product algorithm: the setting's for fp32 inputs on the GPU,
    DEFAULT for 16-bit inputs and in the interpreter (the CPU takes DEFAULT)."""
    if dtype == jnp.float32 and not interpret:
        return _matmul_precision()
    return jax.lax.DotAlgorithmPreset.DEFAULT


def dropout_seed(rng: jax.Array) -> jax.Array:
    """The kernels' int32 (1,) dropout seed drawn from a dropout key."""
    return jax.random.randint(rng, (1,), jnp.iinfo(jnp.int32).min, jnp.iinfo(jnp.int32).max,
                              jnp.int32)


def _pallas_forward(q, k, v, key_valid, query_counts, query_divisors, seed=None, *, block_q,
                    block_k, num_warps, num_stages, interpret, key_splits, dropout_rate=0.0,
                    with_lse=False):
    """(output (B, Nq, H, Dh), log-sum-exp (B, H, Nq) fp32 over all keys or None): the
    kernel's forward pass; the log-sum-exp only ``with_lse``."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    batch, nq, heads, dim = q.shape
    nk = k.shape[1]
    q_blocks, key_blocks = -(-nq // block_q), -(-nk // block_k)
    splits = key_splits or auto_key_splits(q_blocks * batch * heads, key_blocks)
    splits = max(1, min(splits, key_blocks))
    blocks_per_split = -(-key_blocks // splits)
    dim_p, (q, k, v) = pad_head_dim(q, k, v)
    ragged = query_counts is not None
    counts = row_counts(query_counts, batch, heads)
    precision = kernel_precision(q.dtype, interpret)
    kernel = functools.partial(
        _kernel, block_q=block_q, block_k=block_k, nq=nq, nk=nk,
        blocks_per_split=blocks_per_split, heads=heads, splits=splits, precision=precision,
        ragged=ragged, masked_keys=key_valid is not None, divided=query_divisors is not None,
        fast_exp2=not interpret, dropout=float(dropout_rate), with_lse=with_lse)
    head_of = (lambda hs: hs // splits) if splits > 1 else (lambda hs: hs)
    row_spec = lambda n: pl.BlockSpec((None, n, None, dim_p), lambda i, b, hs: (b, 0, head_of(hs), 0))
    in_specs = [pl.BlockSpec((counts.shape[0],), lambda i, b, hs: (0,)),
                row_spec(nq), row_spec(nk), row_spec(nk)]
    operands = [counts, q, k, v]
    if key_valid is not None:
        in_specs.append(pl.BlockSpec((None, nk), lambda i, b, hs: (b, 0)))
        operands.append(key_valid.astype(jnp.int32))
    if query_divisors is not None:
        in_specs.append(pl.BlockSpec((None, None, nq), lambda i, b, hs: (b, head_of(hs), 0)))
        operands.append(query_divisors.astype(jnp.float32))
    if dropout_rate:
        in_specs.append(pl.BlockSpec((1,), lambda i, b, hs: (0,)))
        operands.append(jnp.asarray(seed, jnp.int32).reshape(1))
    if splits == 1:
        out_specs = row_spec(nq)
        out_shape = jax.ShapeDtypeStruct((batch, nq, heads, dim_p), q.dtype)
        if with_lse:
            out_specs = [out_specs, pl.BlockSpec((None, None, nq), lambda i, b, hs: (b, hs, 0))]
            out_shape = [out_shape, jax.ShapeDtypeStruct((batch, heads, nq), jnp.float32)]
    else:
        out_specs = [
            pl.BlockSpec((None, None, nq, None, dim_p),
                         lambda i, b, hs: (hs % splits, b, 0, hs // splits, 0)),
            pl.BlockSpec((None, None, None, nq), lambda i, b, hs: (hs % splits, b, hs // splits, 0)),
        ]
        out_shape = [jax.ShapeDtypeStruct((splits, batch, nq, heads, dim_p), jnp.float32),
                     jax.ShapeDtypeStruct((splits, batch, heads, nq), jnp.float32)]
    out = pl.pallas_call(
        kernel,
        grid=(q_blocks, batch, heads * splits),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="detr_flash_attention",
    )(*operands)
    lse = None
    if splits > 1:
        partial, split_lse = out
        out = combine_splits(partial, split_lse).astype(q.dtype)
        if with_lse:  # log-sum-exp over the ranges' log-sum-exps
            top = jnp.max(split_lse, axis=0)
            lse = top + jnp.log(jnp.maximum(jnp.sum(jnp.exp(split_lse - top), axis=0), 1e-30))
    elif with_lse:
        out, lse = out
    return (out if dim_p == dim else out[..., :dim]), lse


def reference_attention(q, k, v, key_valid, query_counts, query_divisors=None,
                        dropout_rate: float = 0.0, seed=None):
    """The XLA computation the kernel fuses (rows past ``query_counts`` are zero), with the
    kernel's attention dropout (``dropout_keep`` of ``seed``) when ``dropout_rate`` > 0."""
    if query_divisors is not None:
        divisors = jnp.maximum(query_divisors.astype(jnp.float32), 1.0).transpose(0, 2, 1)
        q = (q.astype(jnp.float32) / divisors[..., None]).astype(q.dtype)
    mask = None if key_valid is None else ~key_valid.astype(bool)
    if dropout_rate:
        batch, nq, heads, _ = q.shape
        nk = k.shape[1]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask[:, None, None, :], -jnp.inf, logits)
        weights = jax.nn.softmax(logits, axis=-1)
        keep = dropout_keep(seed, jnp.arange(batch * heads).reshape(batch, heads),
                            jnp.arange(nq), jnp.arange(nk), nk, dropout_rate)
        weights = jnp.where(keep, weights, 0.0) / (1.0 - dropout_rate)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
        out = masked_softmax_attention(q, k, v, mask)
    if query_counts is not None:
        rows = jnp.arange(q.shape[1])[None, :, None]
        out = jnp.where((rows < query_counts[:, None, :])[..., None], out, 0.0).astype(out.dtype)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=tuple(range(7, 15)))
def _flash(q, k, v, key_valid, query_counts, query_divisors, seed, block_q, block_k,
           num_warps, num_stages, interpret, key_splits, dropout_rate, backward):
    return _pallas_forward(q, k, v, key_valid, query_counts, query_divisors, seed,
                           block_q=block_q, block_k=block_k, num_warps=num_warps,
                           num_stages=num_stages, interpret=interpret, key_splits=key_splits,
                           dropout_rate=dropout_rate)[0]


def _flash_fwd(q, k, v, key_valid, query_counts, query_divisors, seed, block_q, block_k,
               num_warps, num_stages, interpret, key_splits, dropout_rate, backward):
    out, lse = _pallas_forward(q, k, v, key_valid, query_counts, query_divisors, seed,
                               block_q=block_q, block_k=block_k, num_warps=num_warps,
                               num_stages=num_stages, interpret=interpret,
                               key_splits=key_splits, dropout_rate=dropout_rate,
                               with_lse=backward == "kernel")
    saved = (out, lse) if backward == "kernel" else (None, None)
    return out, (q, k, v, key_valid, query_counts, query_divisors, seed) + saved


def _flash_bwd(block_q, block_k, num_warps, num_stages, interpret, key_splits, dropout_rate,
               backward, residuals, grad):
    q, k, v, key_valid, query_counts, query_divisors, seed, out, lse = residuals
    if backward == "kernel":
        from detr_jax.attention import flash_backward
        dq, dk, dv = flash_backward.attention_grads(
            q, k, v, key_valid, query_counts, seed, out, lse, grad, dropout_rate=dropout_rate,
            num_warps=num_warps, interpret=interpret)
    else:
        # Recompute the probabilities only once the incoming gradient exists: without the
        # barrier XLA may schedule every layer's recomputation right after the forward
        # pass (it depends only on q, k, v) and keep all of them alive at once.
        q, k, v, grad = jax.lax.optimization_barrier((q, k, v, grad))
        _, vjp = jax.vjp(lambda q, k, v: reference_attention(
            q, k, v, key_valid, query_counts, query_divisors, dropout_rate, seed), q, k, v)
        dq, dk, dv = vjp(grad)
    zero = lambda x: None if x is None else jnp.zeros(x.shape, jax.dtypes.float0)
    divisor_grad = None if query_divisors is None else jnp.zeros_like(query_divisors)
    return dq, dk, dv, zero(key_valid), zero(query_counts), divisor_grad, zero(seed)


_flash.defvjp(_flash_fwd, _flash_bwd)


def default_tiles(dtype) -> tuple[int, int, int]:
    """(block_q, block_k, num_stages) for inputs of ``dtype``: the tiles that ran the DC5
    encoder's attention fastest at batch 8 without slowing batch 1 (3800 tokens, 8 heads
    of 32, 4 warps; one H200, ``benchmarks/flash_tiles.py``): 128 query rows x 64 keys in
    2 stages for fp32 inputs (TF32 or fp32 products), 64 x 128 in 3 stages for 16-bit
    inputs, whose tiles take half the registers."""
    return (64, 128, 3) if jnp.dtype(dtype).itemsize <= 2 else (128, 64, 2)


def flash_attention(q, k, v, key_valid=None, query_counts=None, query_divisors=None, *,
                    block_q: int | None = None, block_k: int | None = None, num_warps: int = 4,
                    num_stages: int | None = None,
                    interpret: bool = False, key_splits: int | None = None,
                    dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                    backward: str = "xla") -> jax.Array:
    """Scaled dot-product attention with padded keys and ragged queries, fused.

    Args:
      q: (B, Nq, H, Dh) queries, already scaled; k, v: (B, Nk, H, Dh).
      key_valid: (B, Nk) bool, False on padded keys (never attended), or None.
      query_counts: (B, H) int, the number of leading query rows of each (image, head)
        that are real; later rows do no work and come out as zeros. None: all rows.
      query_divisors: (B, H, Nq) float, each query row is divided by max(divisor, 1)
        first (prototype sums and cluster sizes give the means); None: no division.
      block_q, block_k: tile sizes (powers of 2 >= 16); None: ``default_tiles(q.dtype)``.
      num_warps, num_stages: Triton options (num_stages None: ``default_tiles``).
      interpret: run through the Pallas interpreter (CPU tests).
      key_splits: programs per row's keys (split-K, a positive integer); None:
        ``auto_key_splits``.
      dropout_rate, dropout_rng: attention dropout (training), drawn inside the kernel
        from a seed taken from ``dropout_rng`` (``dropout_keep``; not jax.random's
        stream, so the XLA path drops other probabilities); none when ``dropout_rng`` is
        None or the rate 0.
      backward: how the gradient is computed: ``"xla"`` recomputes the probabilities with
        XLA ops (the (Nq, Nk) matrix of one layer in memory at a time), ``"kernel"`` runs
        the fused backward kernels (``flash_backward``; memory linear in N; not with
        ``query_divisors``).
    Returns:
      (B, Nq, H, Dh) in q's dtype.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"flash_attention: q {q.shape}, k {k.shape}, v {v.shape} must be "
                         "(B, Nq, H, Dh), (B, Nk, H, Dh), (B, Nk, H, Dh)")
    tiles = default_tiles(q.dtype)
    block_q = tiles[0] if block_q is None else block_q
    block_k = tiles[1] if block_k is None else block_k
    num_stages = tiles[2] if num_stages is None else num_stages
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"flash_attention: {name}={block} must be a power of 2 >= 16")
    if key_splits is not None and (not isinstance(key_splits, int) or key_splits < 1):
        raise ValueError(f"flash_attention: key_splits={key_splits!r} must be a positive integer")
    if query_divisors is not None and query_divisors.shape != (q.shape[0], q.shape[2], q.shape[1]):
        raise ValueError(f"flash_attention: query_divisors {query_divisors.shape} must be "
                         f"(B, H, Nq) = {(q.shape[0], q.shape[2], q.shape[1])}")
    if backward not in ("xla", "kernel"):
        raise ValueError(f"flash_attention: backward={backward!r} must be 'xla' or 'kernel'")
    if backward == "kernel" and query_divisors is not None:
        raise ValueError("flash_attention: backward='kernel' does not take query_divisors "
                         "(ACT's prototype means); use backward='xla'")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"flash_attention: dropout_rate={dropout_rate!r} must be in [0, 1)")
    seed = None
    if dropout_rate and dropout_rng is not None:
        seed = dropout_seed(dropout_rng)
    else:
        dropout_rate = 0.0
    return _flash(q, k, v, key_valid, query_counts, query_divisors, seed, block_q, block_k,
                  num_warps, num_stages, bool(interpret), key_splits, float(dropout_rate),
                  backward)


def available() -> bool:
    """Whether the kernel can compile on the default backend (a CUDA GPU with Triton)."""
    return _probe()


@functools.lru_cache(maxsize=None)
def _probe() -> bool:
    if jax.default_backend() != "gpu":
        return False
    # Models resolve their backend while being built, possibly inside a trace
    # (``nnx.eval_shape``), where compiling the probe would see tracers and fail. JAX's
    # trace state is per thread: compile and run the probe in a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_compile_probe).result()


def _compile_probe() -> bool:
    try:
        x = jnp.zeros((1, 64, 1, 32), jnp.float32)
        jax.block_until_ready(jax.jit(flash_attention)(x, x, x))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        return False

