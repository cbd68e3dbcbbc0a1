"""Attention forward + backward at DC5 training size, three ways, with attention dropout.

    python benchmarks/flash_training.py --batch 4 --dtypes float32,bfloat16 --json flash_training.json

Times ``jax.value_and_grad`` of one encoder layer's attention (N = ``--tokens`` = 3800
queries and keys, 8 heads of 32, a random cotangent) under jit, for:

- ``xla``: ``softmax.masked_softmax_attention`` with jax.random dropout: what a training
  call with attention dropout runs under ``attention_training = "xla"``;
- ``kernel+xla``: the fused kernel forward without dropout, its gradient recomputed with
  XLA ops: ``"xla"``'s training call when ``attention_dropout = 0``;
- ``kernel+kernel``: the fused kernel with its in-kernel dropout and the backward kernels
  (``attention_training = "fused"``, the default).

Prints median ms per call and XLA's memory footprint of each compiled gradient. ``--check``
compares ``kernel+kernel``'s output and gradients with ``flash.reference_attention`` under the
same dropout mask instead (exit code 1 past a relative error of 1e-2). Without a
GPU the kernels run in the Pallas interpreter (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detr_jax.attention.flash import dropout_seed, flash_attention, reference_attention  # noqa: E402
from detr_jax.attention.softmax import masked_softmax_attention  # noqa: E402
from detr_jax.benchmark import _timed, _xla_memory_mib  # noqa: E402

HEADS, HEAD_DIM = 8, 32


def inputs(batch: int, tokens: int, dtype):
    """Seeded q, k, v and an output cotangent, each (batch, tokens, HEADS, HEAD_DIM), with
    q and k scaled so that the logits have unit variance."""
    rng = np.random.default_rng(0)
    shape = (batch, tokens, HEADS, HEAD_DIM)
    return tuple(jnp.asarray(rng.normal(size=shape) / (HEAD_DIM ** 0.25 if i < 2 else 1.0), dtype)
                 for i in range(4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=3800)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rate", type=float, default=0.1, help="attention dropout")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default="")
    parser.add_argument("--check", action="store_true",
                        help="instead of timing, compare the kernels' output and gradients with the "
                             "XLA reference under the same dropout mask (relative norm errors)")
    args = parser.parse_args(argv)
    interpret = jax.default_backend() != "gpu"
    if args.check:
        return check(args, interpret)
    rows = []
    for dtype in args.dtypes.split(","):
        q, k, v, cotangent = inputs(args.batch, args.tokens, dtype)
        padding = jnp.zeros((args.batch, args.tokens), bool)
        key = jax.random.key(1)
        ways = {
            "xla": lambda q, k, v: masked_softmax_attention(
                q, k, v, padding, dropout_rate=args.rate, dropout_rng=key),
            "kernel+xla": lambda q, k, v: flash_attention(
                q, k, v, ~padding, interpret=interpret),
            "kernel+kernel": lambda q, k, v: flash_attention(
                q, k, v, ~padding, dropout_rate=args.rate, dropout_rng=key, backward="kernel",
                interpret=interpret),
        }
        for way, attend in ways.items():
            loss = lambda q, k, v, attend=attend: jnp.sum(
                attend(q, k, v).astype(jnp.float32) * cotangent.astype(jnp.float32))
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            compiled = step.lower(q, k, v).compile()
            ms = statistics.median(_timed(lambda: compiled(q, k, v), 3, args.reps)) * 1e3
            row = dict(way=way, dtype=dtype, batch=args.batch, tokens=args.tokens,
                       dropout=0.0 if way == "kernel+xla" else args.rate, ms=ms,
                       xla_memory_mib=_xla_memory_mib(compiled),
                       device=jax.devices()[0].device_kind)
            rows.append(row)
            memory = row["xla_memory_mib"]
            print(f"{dtype} {way}: {ms:.3f} ms, XLA footprint "
                  f"{'n/a' if memory is None else f'{memory:.0f} MiB'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def relative_error(got, want) -> float:
    """||got - want|| / ||want|| in float32."""
    got, want = (jnp.asarray(x, jnp.float32) for x in (got, want))
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def check(args, interpret: bool) -> int:
    """The kernels' output and gradients (in-kernel dropout, backward kernels) against
    ``flash.reference_attention`` with the same hashed dropout mask, per dtype and rate, at
    ``--tokens`` with a quarter of the keys of the last image padded. Exit code 1 if a
    relative norm error passes 1e-2 (TF32 and bf16 products; fp32 at highest: ~1e-6)."""
    worst = 0.0
    for dtype in args.dtypes.split(","):
        q, k, v, cotangent = inputs(args.batch, args.tokens, dtype)
        valid = jnp.ones((args.batch, args.tokens), bool).at[-1, args.tokens * 3 // 4:].set(False)
        key = jax.random.key(1)
        for rate in (0.0, args.rate):
            kernel = lambda q, k, v: flash_attention(
                q, k, v, valid, dropout_rate=rate, dropout_rng=key, backward="kernel",
                interpret=interpret)
            reference = lambda q, k, v: reference_attention(
                q, k, v, valid, None, None, rate, dropout_seed(key))
            results = []
            for attend in (kernel, reference):
                def forward_backward(q, k, v, attend=attend):
                    out, pullback = jax.vjp(attend, q, k, v)
                    return out, pullback(cotangent.astype(out.dtype))
                results.append(jax.jit(forward_backward)(q, k, v))
            (out, grads), (want_out, want_grads) = results
            errors = {"out": relative_error(out, want_out)}
            errors.update({f"d{n}": relative_error(g, w) for n, g, w in zip("qkv", grads, want_grads)})
            worst = max(worst, *errors.values())
            print(f"check {dtype} dropout {rate}: " + ", ".join(
                f"{n} {e:.2e}" for n, e in errors.items()) + " (relative to the reference)",
                flush=True)
    print(f"check: worst relative error {worst:.2e} ({'ok' if worst < 1e-2 else 'FAILED'})")
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
