"""Device time of ACT's cluster numberings alone, at DETR-DC5 size (N = 3800, 8 heads).

    python benchmarks/numbering_speed.py --batches 1,8 --output numbering.json

Numbers each (image, head) row of random 64-bit hashes with ``--distinct`` different
values: the sort numbering (``clustering.cluster_ids``), the hash-table numbering in XLA
ops (``clustering.table_cluster_ids``) and, on a GPU, the fused table kernel
(``table_kernel.table_numbering``) for each ``--warps`` and ``--rounds`` setting. Prints
the device-busy ms per call (a profiler trace of ``--reps`` calls) and the number of
kernels launched per call, and checks that every numbering gives the sort's partition.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detr_jax.attention.clustering import cluster_ids, table_cluster_ids  # noqa: E402
from kernel_profile import traced_device_times  # noqa: E402

HEADS = 8


def random_words(rows: int, n: int, distinct: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**32, (rows, distinct, 2), dtype=np.uint64).astype(np.uint32)
    words = np.take_along_axis(pool, rng.integers(0, distinct, (rows, n))[..., None], axis=1)
    return jax.numpy.asarray(words[..., 0]), jax.numpy.asarray(words[..., 1])


def same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return all(len(set(zip(x, y))) == len(set(x)) == len(set(y)) for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--tokens", type=int, default=3800)
    parser.add_argument("--distinct", type=int, default=1900)
    parser.add_argument("--warps", default="4,8,16,32")
    parser.add_argument("--rounds", default="1,4")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    rows_out = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows = batch * HEADS
        hi, lo = random_words(rows, args.tokens, args.distinct)
        valid = jax.numpy.ones((rows, args.tokens), bool)
        cases = {"sort (XLA)": jax.jit(lambda hi, lo: cluster_ids(hi, lo, valid)),
                 "table (XLA)": jax.jit(lambda hi, lo: table_cluster_ids(hi, lo, valid))}
        if gpu:
            from detr_jax.attention.table_kernel import table_numbering
            for warps in (int(w) for w in args.warps.split(",")):
                for rounds in (int(r) for r in args.rounds.split(",")):
                    cases[f"table kernel, {warps} warps, {rounds} rounds"] = jax.jit(
                        lambda hi, lo, w=warps, r=rounds: table_numbering(
                            hi, lo, None, heads=HEADS, rounds=r, num_warps=w))
        reference = cases["sort (XLA)"](hi, lo)[0]
        for label, fn in cases.items():
            ids = jax.block_until_ready(fn(hi, lo))[0]
            for _ in range(3):
                jax.block_until_ready(fn(hi, lo))
            kernels = traced_device_times(lambda: fn(hi, lo), args.reps)
            row = dict(case=label, batch=batch, rows=rows, tokens=args.tokens,
                       distinct=args.distinct, device_ms=sum(kernels.values()),
                       kernels=len(kernels), same_partition=same_partition(ids, reference))
            rows_out.append(row)
            print(f"B={batch} {label:36s} {row['device_ms']:.4f} ms, {len(kernels)} kernels, "
                  f"partition {'equal' if row['same_partition'] else 'DIFFERENT'}", flush=True)
    print(f"\nDevice: {jax.devices()[0].device_kind}\n")
    print("| batch | numbering | device ms | kernels | partition = sort's |\n| --- | --- | --- | --- | --- |")
    for r in rows_out:
        print(f"| {r['batch']} | {r['case']} | {r['device_ms']:.4f} | {r['kernels']} | "
              f"{r['same_partition']} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows_out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
