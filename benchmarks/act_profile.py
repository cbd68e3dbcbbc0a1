"""Where ACT's time goes: the pieces of one ACT attention call, each jitted and timed alone.

    python benchmarks/act_profile.py --batches 1,8 --output act_profile.json

One encoder layer's attention core at DETR-DC5 size (N tokens, 8 heads of 32), with
inputs holding N/divisor distinct tokens per image (so that many prototypes; one pass per
``--divisors`` entry): hashing (projection + 64-bit combination), cluster numbering
(sort), prototype means (scatter-add), prototype attention at the chosen capacity,
broadcast back (gather), the whole ACT core with the capacity switch and at a fixed
capacity, and exact attention. It also times a candidate numbering + means without
atomic adds (``sorted_segment_means``: one sort, then a segmented scan) against the
current pair and checks that both give the same clusters and means.
Medians of ``--reps`` calls after warm-up.
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

from detr_jax.attention import act as act_mod  # noqa: E402
from detr_jax.attention import flash  # noqa: E402
from detr_jax.attention.backend import resolve_backend  # noqa: E402
from detr_jax.attention import clustering  # noqa: E402
from detr_jax.attention.softmax import masked_softmax_attention  # noqa: E402
from detr_jax.attention.e2lsh import combine_rounds, draw_hash_params, round_hashes  # noqa: E402

HEADS, HEAD_DIM = 8, 32


def median_ms(fn, *args, warmup=5, reps=50):
    jax.block_until_ready(fn(*args))
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def sorted_segment_means(x, hi, lo, valid, capacity):
    """Candidate replacement of ``cluster_ids`` + ``cluster_means`` without atomics.

    One sort by hash, padding last (``clustering.sorted_clusters``); then the members of each
    cluster are contiguous, so a segmented inclusive scan (``lax.associative_scan``) leaves each
    cluster's sum at its last member, which is stored into the cluster's slot (one write
    per slot). Returns (means (R, capacity, D), counts (R, capacity), ids (R, N)), equal to
    ``cluster_means(x, cluster_ids(hi, lo, valid)[0], capacity)`` and those ids.
    """
    rows, n, d = x.shape
    perm, sorted_ids, starts = clustering.sorted_clusters(hi, lo, valid)
    real = sorted_ids >= 0
    x_s = jnp.take_along_axis(x.astype(jnp.float32), perm[..., None], axis=1)
    x_s = jnp.where(real[..., None], x_s, 0.0)  # padding may share the last run

    def combine(a, b):
        (a_sum, a_count, a_flag), (b_sum, b_count, b_flag) = a, b
        return (jnp.where(b_flag[..., None], b_sum, a_sum + b_sum),
                jnp.where(b_flag, b_count, a_count + b_count), a_flag | b_flag)

    sums, sizes, _ = jax.lax.associative_scan(
        combine, (x_s, real.astype(jnp.int32), starts), axis=1)
    last = real & jnp.concatenate([starts[:, 1:] | ~real[:, 1:], jnp.ones((rows, 1), bool)], axis=1)
    slot = jnp.where(last & (sorted_ids < capacity), sorted_ids, capacity)  # capacity: dropped
    row = jnp.arange(rows)[:, None]
    total = jnp.zeros((rows, capacity + 1, d), jnp.float32).at[row, slot].set(sums)[:, :capacity]
    counts = jnp.zeros((rows, capacity + 1), jnp.int32).at[row, slot].set(sizes)[:, :capacity]
    ids = jnp.zeros((rows, n), jnp.int32).at[row, perm].set(sorted_ids, unique_indices=True)
    means = total / jnp.maximum(counts, 1)[..., None].astype(jnp.float32)
    return means.astype(x.dtype), counts, ids


def inputs(batch, n, distinct, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(0, 1, (batch, distinct, HEADS, HEAD_DIM)).astype(np.float32)
    index = np.stack([rng.permutation(np.arange(n) % distinct) for _ in range(batch)])
    q = np.take_along_axis(rows, index[:, :, None, None], axis=1)
    k = rng.normal(0, 1, (batch, n, HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.normal(0, 1, (batch, n, HEADS, HEAD_DIM)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=3800)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--divisors", default="2,64",
                        help="distinct tokens (prototypes) = N / divisor, one pass each")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    n = args.tokens
    spec = act_mod.ACT(bucket_width=1e-3)
    weights, biases = draw_hash_params(jax.random.key(0), HEAD_DIM, 32, 1e-3)
    rows_out = []
    cases = [(int(b), int(m)) for b in args.batches.split(",") for m in args.divisors.split(",")]
    for batch, divisor in cases:
        q, k, v = inputs(batch, n, n // divisor)
        valid = clustering.row_valid(None, batch, HEADS, n)
        capacity = -(-n // divisor)
        hash_fn = jax.jit(lambda q: combine_rounds(round_hashes(clustering.to_rows(q), weights, biases, 1e-3)))
        hi, lo = hash_fn(q)
        ids_fn = jax.jit(clustering.cluster_ids)
        ids, counts = ids_fn(hi, lo, valid)
        means_fn = jax.jit(lambda q, ids: clustering.cluster_means(clustering.to_rows(q), ids, capacity)[0])
        protos = clustering.from_rows(means_fn(q, ids), batch)
        attn_fn = jax.jit(lambda p, k, v: masked_softmax_attention(p, k, v, None))
        out = attn_fn(protos, k, v)
        bcast_fn = jax.jit(lambda o, ids: clustering.broadcast_to_members(clustering.to_rows(o), ids))
        build = lambda kernel: spec.build(HEADS * HEAD_DIM, HEADS, layer_index=0, num_layers=6,
                                          backend=resolve_backend(kernel),
                                          rngs=__import__("flax").nnx.Rngs(0))
        module = build("xla")
        full_fn = jax.jit(lambda q, k, v: module.attend(q, k, v, None, jax.random.key(0))[0])
        fixed_fn = jax.jit(lambda q, k, v: act_mod.clustered_attention(
            q, k, v, None, module.clusters(q, None, jax.random.key(0), "Q")[0], None, capacity))
        exact_fn = jax.jit(lambda q, k, v: masked_softmax_attention(q, k, v, None))
        slots = clustering.from_rows(jax.jit(lambda q, ids: clustering.cluster_means(
            clustering.to_rows(q), ids, n)[0])(q, ids), batch)
        ragged = counts.reshape(batch, HEADS)
        ids_means_fn = jax.jit(lambda q, hi, lo, valid: clustering.cluster_means(
            clustering.to_rows(q), clustering.cluster_ids(hi, lo, valid)[0], capacity)[0])
        sorted_fn = jax.jit(lambda q, hi, lo, valid: sorted_segment_means(
            clustering.to_rows(q), hi, lo, valid, capacity))
        new_means, new_counts, new_ids = sorted_fn(q, hi, lo, valid)
        ref_means, ref_counts = clustering.cluster_means(clustering.to_rows(q), ids, capacity)
        check = dict(ids_equal=bool((new_ids == ids).all()),
                     counts_equal=bool((new_counts == ref_counts).all()),
                     means_max_abs=float(jnp.abs(new_means - ref_means).max()))
        pieces = {
            "hash (project + combine)": (hash_fn, q),
            "cluster ids (sort)": (ids_fn, hi, lo, valid),
            "prototype means (scatter)": (means_fn, q, ids),
            "ids + means: sort, scatter-add": (ids_means_fn, q, hi, lo, valid),
            "ids + means: sort, segmented scan": (sorted_fn, q, hi, lo, valid),
            "prototype attention": (attn_fn, protos, k, v),
            "broadcast (gather)": (bcast_fn, out, ids),
            "ACT core, capacity switch": (full_fn, q, k, v),
            "ACT core, fixed capacity": (fixed_fn, q, k, v),
            "exact attention core": (exact_fn, q, k, v),
        }
        if flash.available():
            pieces.update({
                "kernel: prototype attention (ragged)": (
                    jax.jit(lambda p, k, v, c: flash.flash_attention(p, k, v, None, c)), slots, k, v, ragged),
                "kernel: exact attention": (
                    jax.jit(lambda q, k, v: flash.flash_attention(q, k, v)), q, k, v),
            })
            for kernel in ("flash", "xla"):
                fn = jax.jit(lambda q, k, v, m=build(kernel): m.attend(q, k, v, None,
                                                                       jax.random.key(0))[0])
                pieces[f"ACT core [{kernel}]"] = (fn, q, k, v)
        print(f"batch {batch}, N/{divisor}: {int(counts.max())} clusters max, capacity {capacity}; "
              f"segmented scan against scatter-add: {check}", flush=True)
        for name, (fn, *a) in pieces.items():
            ms = median_ms(fn, *a, reps=args.reps)
            rows_out.append(dict(batch=batch, divisor=divisor, piece=name, ms=ms, **check))
            print(f"  {name:30s} {ms:8.3f} ms", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, tokens=n, rows=rows_out), f, indent=1)


if __name__ == "__main__":
    main()
