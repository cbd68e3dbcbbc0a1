"""Which implementation computes softmax attention: XLA ops or the fused Pallas kernel.

``"xla"``: ``base.masked_softmax_attention`` (einsum, softmax, einsum; the (Nq, Nk)
logits live in memory). ``"flash"``: ``flash.flash_attention`` (Pallas/Triton, GPU only;
time and memory linear in the query rows that do work, ragged query counts for ACT).
``"flash_interpret"``: the kernel run by the Pallas interpreter (slow; CPU tests of the
kernel path). ``"auto"`` (the default) takes the kernel when it compiles on the default backend (a
CUDA GPU) and XLA otherwise (CPU, TPU). The choice is read when a function is traced:
set it before the first call (``set_attention_kernel``, the ``attention_kernel`` context
manager, the ``DETR_JAX_ATTENTION_KERNEL`` environment variable, or
``--attention-kernel`` of eval.py and the benchmark).
"""

from __future__ import annotations

import contextlib
import os

import jax

KERNELS = ("auto", "xla", "flash", "flash_interpret")
_setting = {"name": os.environ.get("DETR_JAX_ATTENTION_KERNEL", "auto")}


def _check(name: str) -> str:
    if name not in KERNELS:
        raise ValueError(f"attention kernel {name!r}: choose one of {KERNELS}")
    return name


def set_attention_kernel(name: str) -> None:
    """Set the attention implementation for functions traced from now on."""
    _setting["name"] = _check(name)


@contextlib.contextmanager
def attention_kernel(name: str):
    """Use ``name`` for functions traced inside the block."""
    previous = _setting["name"]
    _setting["name"] = _check(name)
    try:
        yield
    finally:
        _setting["name"] = previous


def resolved_kernel() -> str:
    """"xla", "flash" or "flash_interpret": the implementation a trace started now uses."""
    name = _check(_setting["name"])
    if name == "auto":
        from detr_jax.attention import flash
        return "flash" if flash.available() else "xla"
    return name


def attention_core(q: jax.Array, k: jax.Array, v: jax.Array, key_padding_mask: jax.Array | None,
                   query_counts: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention over per-head tensors with the selected implementation.

    q (B, Nq, H, Dh) scaled, k/v (B, Nk, H, Dh), key_padding_mask (B, Nk) True on padding
    or None -> (B, Nq, H, Dh). ``query_counts`` (B, H): only that many leading query rows
    per (image, head) are needed; the kernel skips the others (zeros), XLA computes them.
    """
    if resolved_kernel() != "xla":
        from detr_jax.attention.flash import flash_attention
        valid = None if key_padding_mask is None else ~key_padding_mask.astype(bool)
        return flash_attention(q, k, v, valid, query_counts)
    from detr_jax.attention.base import masked_softmax_attention
    return masked_softmax_attention(q, k, v, key_padding_mask)
