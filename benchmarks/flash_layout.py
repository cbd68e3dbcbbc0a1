"""The fused attention kernel's value layout: values read as (Nk, Dh) rows or as a
transposed (Dh, Nk) copy, at DETR-DC5 size.

    python benchmarks/flash_layout.py --batches 8,1 --dtypes float32,bfloat16

For the second product (probabilities x values) the values are the matrix unit's B
operand. Read as (Nk, Dh) rows its contraction dimension (the keys) is the strided one;
the transposed copy makes it the contiguous one, which Hopper's TF32 matrix instructions
need of operands in shared memory (16-bit ones may be either). This times both layouts
(the transposed one including its XLA transpose) for N = ``--tokens`` keys and queries, 8
heads of 32, all keys valid, at each batch and input dtype: median wall-clock ms and
device-busy ms (a profiler trace), and the largest difference between the two outputs.
Without a GPU it runs the Pallas interpreter (a check of the script, not a measurement).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detr_jax.attention import flash  # noqa: E402
from detr_jax.benchmark import _timed  # noqa: E402
from kernel_profile import traced_device_times  # noqa: E402

HEADS, HEAD_DIM = 8, 32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--batches", default="8,1")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--tokens", type=int, default=3800)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    interpret = jax.default_backend() != "gpu"
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for dtype in args.dtypes.split(","):
            n = args.tokens
            keys = jax.random.split(jax.random.key(0), 3)
            q, k, v = (jax.random.normal(key, (batch, n, HEADS, HEAD_DIM), jnp.float32).astype(dtype)
                       for key in keys)
            q = q * HEAD_DIM ** -0.5
            valid = jnp.ones((batch, n), bool)
            outputs = {}
            for layout in ("rows", "transposed"):
                tiles = flash.default_tiles(q.dtype)
                fn = jax.jit(lambda q, k, v, valid, t=layout == "transposed": flash._pallas_forward(
                    q, k, v, valid, None, None, block_q=tiles[0], block_k=tiles[1], num_warps=4,
                    num_stages=tiles[2], interpret=interpret, key_splits=None,
                    values_transposed=t)[0])
                outputs[layout] = np.asarray(fn(q, k, v, valid), np.float32)
                call = lambda: fn(q, k, v, valid)
                wall = statistics.median(_timed(call, 3, args.reps)) * 1e3
                device = sum(traced_device_times(call, min(args.reps, 10)).values())
                rows.append(dict(batch=batch, dtype=dtype, layout=layout, wall_ms=wall,
                                 device_ms=device))
                print(f"B={batch} {dtype} values {layout}: {wall:.3f} ms, device {device:.3f} ms",
                      flush=True)
            diff = float(np.max(np.abs(outputs["rows"] - outputs["transposed"])))
            rows[-1]["max_abs_diff"] = diff
            print(f"B={batch} {dtype}: largest difference between the layouts {diff:.3g}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(device=str(jax.devices()[0]), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
