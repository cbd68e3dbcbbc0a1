"""Tile sizes of the fused attention kernel at DETR-DC5 size: full and ragged query rows.

    python benchmarks/flash_tiles.py --batches 1,8 --output flash_tiles.json

At batch 1 the kernel's grid (query blocks x 8 heads) is small next to an H100's 132
multiprocessors, so halving the real query rows (ACT at N/2) need not halve the time
unless the keys are split over several programs (``--splits``, split-K).
This times ``flash.flash_attention`` (N = ``--tokens`` = 3800 keys, 8 heads of 32, inputs
of each of ``--dtypes``: float32 with the default matmul precision (TF32), bfloat16) for
every (block_q, block_k, num_warps, num_stages, key splits) in the sweep, with all N query rows real (exact attention) and with N/2, N/4, N/8 real rows
per (image, head) (ACT's prototype slots). It prints the median wall-clock ms and the
device-busy ms (a profiler trace: the kernel plus the split combination) of each, and
the best setting per case by device time. Without a GPU it runs the Pallas interpreter
(a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detr_jax.attention.flash import default_tiles, flash_attention  # noqa: E402
from detr_jax.benchmark import _timed  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_profile import traced_device_times  # noqa: E402

TOKENS, HEADS, HEAD_DIM = 3800, 8, 32


def time_ms(fn, warmup: int = 3, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls."""
    return statistics.median(_timed(fn, warmup, reps)) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--block-q", default="16,32,64")
    parser.add_argument("--block-k", default="32,64")
    parser.add_argument("--warps", default="2,4")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--divisors", default="1,2,4,8", help="real rows = N / divisor")
    parser.add_argument("--splits", default="1",
                        help="key splits to sweep, comma-separated (integers, auto)")
    parser.add_argument("--dtypes", default="float32",
                        help="input dtypes, comma-separated (float32: TF32 products; bfloat16)")
    parser.add_argument("--stages", default="2", help="Triton pipeline stages to sweep")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    # without a GPU: the Pallas interpreter, which checks the script, slowly
    interpret = jax.default_backend() != "gpu"
    ints = lambda text: [int(v) for v in text.split(",") if v]
    rows = []
    for batch, dtype in itertools.product(ints(args.batches), args.dtypes.split(",")):
        rng = np.random.default_rng(0)
        q, k, v = (jnp.asarray(rng.normal(size=(batch, args.tokens, HEADS, HEAD_DIM)).astype(np.float32)
                               / (HEAD_DIM ** 0.25 if i < 2 else 1.0), dtype) for i in range(3))
        valid = jnp.ones((batch, args.tokens), bool)
        for divisor in ints(args.divisors):
            counts = jnp.full((batch, HEADS), args.tokens // divisor, jnp.int32)
            for block_q, block_k, warps, stages, splits in itertools.product(
                    ints(args.block_q), ints(args.block_k), ints(args.warps), ints(args.stages),
                    [None if s == "auto" else int(s) for s in args.splits.split(",")]):
                fn = jax.jit(lambda q, k, v, valid, counts, bq=block_q, bk=block_k, w=warps,
                             st=stages, s=splits: flash_attention(
                                 q, k, v, valid, counts, block_q=bq, block_k=bk, num_warps=w,
                                 num_stages=st, key_splits=s, interpret=interpret))
                tag = (f"B={batch} {dtype} N/{divisor} bq={block_q} bk={block_k} warps={warps} "
                       f"stages={stages} splits={splits or 'auto'}")
                try:
                    ms = time_ms(lambda: fn(q, k, v, valid, counts), reps=args.reps)
                except Exception as err:  # noqa: BLE001 - a tile that does not compile
                    print(f"{tag}: failed ({type(err).__name__})", flush=True)
                    continue
                busy = sum(traced_device_times(lambda: fn(q, k, v, valid, counts),
                                               args.reps).values())
                rows.append(dict(batch=batch, dtype=dtype, divisor=divisor, block_q=block_q,
                                 block_k=block_k, num_warps=warps, num_stages=stages,
                                 key_splits=splits or "auto", ms=ms,
                                 device_ms=busy, device=jax.devices()[0].device_kind))
                print(f"{tag}: {ms:.3f} ms, device {busy:.3f} ms", flush=True)
    print("\n| batch | dtype | real rows | default tiles device ms | best device ms | "
          "best (bq, bk, warps, stages, splits) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch, dtype, divisor in sorted({(r["batch"], r["dtype"], r["divisor"]) for r in rows}):
        case = [r for r in rows if (r["batch"], r["dtype"], r["divisor"]) == (batch, dtype, divisor)]
        best = min(case, key=lambda r: r["device_ms"])
        default = [r["device_ms"] for r in case if (r["block_q"], r["block_k"], r["num_warps"],
                                                    r["num_stages"], r["key_splits"])
                   == (*default_tiles(dtype)[:2], 4, default_tiles(dtype)[2], "auto")]
        default_ms = f"{default[0]:.3f}" if default else "n/a"
        tiles = (f"({best['block_q']}, {best['block_k']}, {best['num_warps']}, "
                 f"{best['num_stages']}, {best['key_splits']})")
        print(f"| {batch} | {dtype} | N/{divisor} | {default_ms} | {best['device_ms']:.3f} | {tiles} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
