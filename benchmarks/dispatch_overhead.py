"""Host cost of one jitted call that takes a detector's whole state: how the state is
passed (an ``nnx.State`` tree, its flat list of arrays) and how many arrays it is.

    python benchmarks/dispatch_overhead.py --config configs/detr_r50_dc5.py --batch 1

At batch 1 a DETR-DC5 forward pass is a few milliseconds of device work, so the host's
part of a call (flattening the arguments, handing every parameter buffer to the
runtime, launching) shows in the latency. This times, median of ``--reps`` synchronous
calls after warm-up, in microseconds:

- ``trivial/state``: a jitted ``x + 1`` that also takes the model's ``nnx.State``
  (unused), ``trivial/leaves``: the same with the state's flat list of arrays,
  ``trivial/none``: without the state;
- ``forward/state`` and ``forward/leaves``: the model's forward pass (its inference
  copy, as ``Forward`` runs it) on random pixels with the state passed each way (the
  tree is rebuilt inside the jit; ``Forward`` passes the leaves).
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
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detr_jax.benchmark import _timed, parse_size  # noqa: E402
from detr_jax.config_cli import config_for_parser  # noqa: E402
from detr_jax.models.build import build_model  # noqa: E402
from detr_jax.models.inference import inference_model, on_device  # noqa: E402


def median_us(call, warmup: int, reps: int) -> float:
    """Median microseconds of a synchronous ``call()`` after ``warmup`` calls."""
    return statistics.median(_timed(call, warmup, reps)) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=parse_size, default=(800, 1216))
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--output", default="")
    args, rest = parser.parse_known_args(argv)
    cfg = config_for_parser(parser, args.config, rest)
    graphdef, state = nnx.split(inference_model(build_model(cfg.model, seed=0)))
    state = on_device(state)
    leaves, treedef = jax.tree.flatten(state)
    x = jnp.zeros(())
    trivial = jax.jit(lambda s, x: x + 1)
    bare = jax.jit(lambda x: x + 1)
    rows = {"arrays": len(leaves),
            "trivial/state": median_us(lambda: trivial(state, x), 5, args.reps),
            "trivial/leaves": median_us(lambda: trivial(leaves, x), 5, args.reps),
            "trivial/none": median_us(lambda: bare(x), 5, args.reps)}
    rng = np.random.default_rng(0)
    pixels = jax.device_put(rng.normal(size=(args.batch, *args.size, 3)).astype(np.float32))
    mask = jax.device_put(np.zeros((args.batch, *args.size), bool))
    key = jax.random.PRNGKey(0)

    def forward(state, pixels, mask, key):
        out = nnx.merge(graphdef, state)(pixels, mask, rng=key)
        out.pop("aux_outputs", None)
        return out

    run_state = jax.jit(forward)
    run_leaves = jax.jit(lambda leaves, *a: forward(jax.tree.unflatten(treedef, leaves), *a))
    rows["forward/state"] = median_us(lambda: run_state(state, pixels, mask, key), 5, args.reps)
    rows["forward/leaves"] = median_us(lambda: run_leaves(leaves, pixels, mask, key), 5, args.reps)
    for name, value in rows.items():
        print(f"{name}: {value:.1f}" + ("" if name == "arrays" else " us"), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "batch": args.batch, **rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
