"""Milliseconds per Hungarian matching of a training step's costs, per solver.

    python benchmarks/matcher_speed.py --shape 6 16 300 20 --solvers optax kernel scipy

The cost tensor is (decoder layers, images, queries, targets), random normal, as one step
of the trainer matches it (``detr_jax.training.losses.match_layers``: all layers in one
call). Each solver's call is jitted, run ``--warmup`` times, then timed ``--repeat`` times
(each call waited for); the medians are printed with the check that every solver gave the
same assignment as the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from detr_jax.training.matcher import hungarian_match  # noqa: E402


def time_solver(solver: str, cost: jax.Array, warmup: int, repeat: int):
    """(median ms, assignment) of ``hungarian_match(cost, solver)`` jitted."""
    fn = jax.jit(lambda c: hungarian_match(c, solver))
    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(fn(cost))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(cost))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), np.asarray(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[6, 16, 300, 20],
                        metavar=("LAYERS", "IMAGES", "QUERIES", "TARGETS"))
    parser.add_argument("--solvers", nargs="+", default=["optax", "kernel", "scipy"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cost = jnp.asarray(np.random.default_rng(args.seed).normal(size=args.shape), jnp.float32)
    print(f"{jax.devices()[0].device_kind}, cost {tuple(args.shape)}")
    print("| solver | ms per call | same assignment as " + args.solvers[0] + " |")
    print("| --- | --- | --- |")
    first = None
    for solver in args.solvers:
        ms, out = time_solver(solver, cost, args.warmup, args.repeat)
        first = out if first is None else first
        print(f"| {solver} | {ms:.2f} | {bool((out == first).all())} |", flush=True)


if __name__ == "__main__":
    main()
