"""Time the CPU paths of encoder attention at the demo model's size, the peers in one call.

    JAX_PLATFORMS=cpu python benchmarks/cpu_attention.py
    JAX_PLATFORMS=cpu python benchmarks/cpu_attention.py --batch 8 --tokens 768 --reps 7 \
        --output cpu_attention.json

Cases, one encoder layer's attention core (after the projections) per image, random
inputs with the last 20% of keys padded:
  * exact softmax attention, batched einsum (backend ``xla``) against one (image, head)
    at a time (``xla_map``);
  * ACT's cluster numbering of 64-bit hash words: sort against hash table;
  * K-means assignment of 32-bit codes to C centroids: float product against packed codes
    (``popcount`` of XOR), and the whole Lloyd loop (10 steps).
Every function is jitted; after one warm-up call the median of ``--reps`` timed calls
(wall clock, and process CPU time summed over threads) is reported in ms per image, as a
Markdown table and as JSON (``--output``). Numbers depend on the machine and its load:
print ``uptime`` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detr_jax.attention import clustering, kmeans  # noqa: E402
from detr_jax.attention.softmax import (mapped_softmax_attention,  # noqa: E402
                                        masked_softmax_attention)


def timed(fn, args, reps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``reps`` calls of jitted ``fn`` after a warm-up."""
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    wall, cpu = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def cases(batch: int, tokens: int, heads: int, head_dim: int, clusters: int):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, tokens, heads, head_dim)), jnp.float32)
               for _ in range(3))
    mask = jnp.zeros((batch, tokens), bool).at[:, int(tokens * 0.8):].set(True)
    rows = batch * heads
    # hash words with about N/2 distinct values per row
    distinct = rng.integers(0, tokens // 2, size=(rows, tokens))
    hi = jnp.asarray(distinct * 2654435761 % 2**32, jnp.uint32)
    lo = jnp.asarray(distinct * 40503 % 2**32, jnp.uint32)
    valid = jnp.asarray(np.broadcast_to(~np.asarray(mask)[:, None], (batch, heads, tokens))
                        .reshape(rows, tokens))
    codes = jnp.asarray(rng.choice([-1.0, 1.0], size=(rows, tokens, 32)), jnp.float32)
    centroids = kmeans.initial_centroids(codes, valid, clusters)
    words, centroid_words = kmeans.pack_codes(codes), kmeans.pack_codes(centroids)
    return [
        ("exact attention", "xla (batched einsum)", masked_softmax_attention, (q, k, v, mask)),
        ("exact attention", "xla_map (one image and head at a time)", mapped_softmax_attention,
         (q, k, v, mask)),
        ("ACT numbering", "sort", clustering.cluster_ids, (hi, lo, valid)),
        ("ACT numbering", "table", clustering.table_cluster_ids, (hi, lo, valid)),
        ("K-means assignment", "float product", kmeans.assign, (codes, centroids, valid)),
        ("K-means assignment", "packed codes", kmeans.assign_packed,
         (words, centroid_words, valid)),
        ("K-means Lloyd loop (10 steps)", "packed codes",
         lambda c, m: kmeans.kmeans_ids(c, m, clusters, 10), (codes, valid)),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=768, help="N (demo: 24 x 32 padded)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--clusters", type=int, default=32, help="K-means C")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args(argv)
    results = []
    print(f"batch {args.batch}, N {args.tokens}, {args.heads} heads x {args.head_dim}, "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}")
    print("| case | implementation | ms/img wall | ms/img CPU |\n| --- | --- | --- | --- |")
    for case, impl, fn, fn_args in cases(args.batch, args.tokens, args.heads, args.head_dim,
                                         args.clusters):
        wall, cpu = timed(fn, fn_args, args.reps)
        row = {"case": case, "implementation": impl, "ms_per_image_wall": 1e3 * wall / args.batch,
               "ms_per_image_cpu": 1e3 * cpu / args.batch}
        results.append(row)
        print(f"| {case} | {impl} | {row['ms_per_image_wall']:.2f} | "
              f"{row['ms_per_image_cpu']:.2f} |", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "load": os.getloadavg()[0], "results": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
