"""Time encoder self-attention: exact vs ACT with forced prototype counts, at DETR-DC5 size.

    python benchmarks/encoder_attention.py --output encoder_attention.json
    python benchmarks/encoder_attention.py --tokens 256 --batches 1 --reps 3 --output /tmp/a.json

Cases (d=256, 8 heads, random weights, no padding), each for one self-attention layer
(projections included) and for the 6-layer encoder (attention, FFN, norms):
  * exact attention, fp32 einsum-softmax-einsum (``Exact``);
  * exact attention through ``jax.nn.dot_product_attention(implementation="cudnn")`` in
    bf16, when cuDNN accepts it (GPU only);
  * ACT with about N/2, N/4, N/8 prototypes per (image, head). Inputs have exactly that many
    distinct tokens and ACT uses a tiny bucket width, so every distinct token is its own
    cluster; the count stays the same through all layers (equal tokens stay equal), and the
    capacity ladder (N/16, N/8, N/4, N/2, N) runs the prototype attention at that rung.
Every function is jitted; after warm-up the median of ``--reps`` timed calls (each ended by
``block_until_ready``) is reported, as a Markdown table and as JSON (``--output``).
``--key-splits auto,1`` times the fused kernel with its automatic split-K and with one
key range per program; ``--device-time`` adds each case's device-busy ms per call (a
``jax.profiler`` trace of ``--reps`` calls), which leaves out the host's dispatch gaps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import detr_jax  # noqa: E402
from detr_jax.attention import AttentionSpec, EncoderAttention  # noqa: E402
from detr_jax.attention.backend import resolve_backend  # noqa: E402
from detr_jax.models.transformer import Encoder  # noqa: E402

D_MODEL, HEADS = 256, 8


class CudnnAttention(EncoderAttention):
    """Exact attention through ``jax.nn.dot_product_attention`` (cuDNN), inputs cast to bf16."""

    def attend(self, q, k, v, key_padding_mask, rng):
        del rng
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = jax.nn.dot_product_attention(
            q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
            mask=mask, scale=1.0, implementation="cudnn")
        return out.astype(v.dtype), None


@dataclasses.dataclass(frozen=True)
class Cudnn(AttentionSpec):
    """Benchmark-only spec of :class:`CudnnAttention` (not registered)."""

    name = "cudnn"

    def build(self, d_model, num_heads, *, layer_index, num_layers, dtype=None, backend=None,
              rngs):
        return CudnnAttention(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                              backend=backend, rngs=rngs)


def cudnn_available() -> bool:
    """Whether cuDNN attention compiles here (bf16, head_dim 32)."""
    try:
        x = jnp.zeros((1, 128, HEADS, D_MODEL // HEADS), jnp.bfloat16)
        jax.jit(lambda a: jax.nn.dot_product_attention(a, a, a, implementation="cudnn"))(x)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def synthetic_tokens(seed: int, batch: int, tokens: int, distinct: int | None) -> jax.Array:
    """(batch, tokens, d) inputs with ``distinct`` different rows per image (None: all)."""
    rng = np.random.default_rng(seed)
    if distinct is None:
        return jnp.asarray(rng.normal(0, 1, (batch, tokens, D_MODEL)).astype(np.float32))
    rows = rng.normal(0, 1, (batch, distinct, D_MODEL)).astype(np.float32)
    index = np.stack([rng.permutation(np.arange(tokens) % distinct) for _ in range(batch)])
    return jnp.asarray(np.take_along_axis(rows, index[..., None], axis=1))


def median_ms(fn, args, warmup: int, reps: int) -> tuple[float, float, Any]:
    """(compile + first call seconds, median milliseconds, last output) of ``fn(*args)``."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return first, statistics.median(times), out


def device_kernels(fn, args, reps: int) -> dict[str, tuple[float, str]]:
    """Device milliseconds per call of each kernel of ``fn(*args)`` (a profiler trace of
    ``reps`` calls), with the JAX operation it comes from: {kernel: (ms, op)}."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernel_profile import attribute, hlo_op_names, traced_device_times
    per_call = traced_device_times(lambda: fn(*args), reps)
    op_names = hlo_op_names(fn.lower(*args).compile().as_text())
    return {name: (ms, attribute(name, op_names))
            for name, ms in sorted(per_call.items(), key=lambda kv: -kv[1])}


def parse_splits(text: str) -> list[int | None]:
    """``"auto,1,4"`` -> [None, 1, 4] (None: the kernel's automatic split-K)."""
    return [None if part == "auto" else int(part) for part in text.split(",") if part]


def layer_fn(spec: AttentionSpec, dtype, backend):
    """Jitted one-layer self-attention ``f(state, x) -> (out, stats)`` and its state."""
    module = spec.build(D_MODEL, HEADS, layer_index=0, num_layers=6, dtype=dtype,
                        backend=backend, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, x):
        x = x.astype(dtype)
        return nnx.merge(graphdef, state)(x, x, x, None, None)

    return run, state


def encoder_fn(spec: AttentionSpec, dtype, layers: int, backend):
    """Jitted ``f(state, src) -> (memory, stats)`` of a DETR encoder (pos = 0, no padding)."""
    cfg = detr_jax.model_config(enc_layers=layers)
    graphdef, state = nnx.split(Encoder(cfg, spec, dtype, nnx.Rngs(0), backend))

    @jax.jit
    def run(state, src):
        src = src.astype(dtype)
        return nnx.merge(graphdef, state)(src, jnp.zeros_like(src), None)

    return run, state


def cluster_summary(stats) -> dict:
    """Mean prototypes per (image, head) and the capacities used, from layer stats."""
    per_layer = stats if isinstance(stats, list) else [stats]
    if not per_layer or per_layer[0] is None or per_layer[0].num_clusters is None:
        return {}
    return {"mean_clusters": float(np.mean([np.mean(s.num_clusters) for s in per_layer])),
            "capacity": sorted({int(s.capacity) for s in per_layer})}


def cases(args) -> list[tuple[str, AttentionSpec, Any, int | None]]:
    """(label, spec, dtype, distinct tokens) for every timed variant."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    out = [("exact fp32", detr_jax.Exact(), jnp.float32, None)]
    if not args.no_cudnn and cudnn_available():
        out.append(("exact bf16 cudnn", Cudnn(), jnp.float32, None))
    numberings = args.act_numbering.split(",")
    for name in args.act_dtypes.split(","):
        for divisor in (int(f) for f in args.fractions.split(",")):
            for numbering in numberings:
                spec = detr_jax.ACT(bucket_width=args.act_bucket_width, numbering=numbering)
                label = f"ACT N/{divisor} {name}" + (f" ids={numbering}" if len(numberings) > 1
                                                     else "")
                out.append((label, spec, dtypes[name], args.tokens // divisor))
    if args.kmeans:
        out.append((f"K-means C={args.kmeans} fp32", detr_jax.KMeans(clusters=args.kmeans),
                    jnp.float32, None))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=3800, help="tokens per image (N)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--reps", type=int, default=50, help="timed repetitions per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls after compile")
    parser.add_argument("--layers", type=int, default=6, help="encoder layers (0: skip)")
    parser.add_argument("--fractions", default="2,4,8", help="ACT prototype divisors of N")
    parser.add_argument("--act-dtypes", default="float32",
                        help="ACT compute dtypes, comma-separated (float32,bfloat16)")
    parser.add_argument("--act-bucket-width", type=float, default=1e-3,
                        help="r for the forced-count ACT cases (tiny: one cluster per "
                             "distinct token)")
    parser.add_argument("--act-numbering", default="auto",
                        help="ACT cluster numberings to time, comma-separated (auto, sort, "
                             "table; auto is the table kernel on GPUs)")
    parser.add_argument("--kmeans", type=int, default=0, help="also time K-means with C")
    parser.add_argument("--no-cudnn", action="store_true", help="skip the cuDNN case")
    parser.add_argument("--kernels", default="xla,flash",
                        help="attention implementations to time, comma-separated (xla, flash)")
    parser.add_argument("--key-splits", default="auto",
                        help="fused-kernel key splits to time, comma-separated (auto, 1, 2, ...)")
    parser.add_argument("--device-time", action="store_true",
                        help="also report device-busy ms per call from a profiler trace")
    parser.add_argument("--kernel-top", type=int, default=0,
                        help="with --device-time: print the K slowest kernels of each case")
    parser.add_argument("--output", required=True, help="JSON output path")
    args = parser.parse_args(argv)

    rows = []
    device = str(jax.devices()[0].device_kind)
    variants = []
    for kernel in args.kernels.split(","):
        for splits in (parse_splits(args.key_splits) if kernel == "flash" else [None]):
            variants.append((kernel, splits))
    for batch in (int(b) for b in args.batches.split(",")):
        for base_label, spec, dtype, distinct in cases(args):
            x = synthetic_tokens(batch, batch, args.tokens, distinct)
            reference = None
            for kernel, splits in variants if not isinstance(spec, Cudnn) else variants[:1]:
                tag = kernel + ("" if splits is None else f" S={splits}")
                label = base_label if isinstance(spec, Cudnn) else f"{base_label} [{tag}]"
                backend = resolve_backend(kernel, "auto" if splits is None else splits)
                scopes = [("1 layer attention", layer_fn(spec, dtype, backend))]
                if args.layers:
                    scopes.append((f"{args.layers}-layer encoder",
                                   encoder_fn(spec, dtype, args.layers, backend)))
                for scope, (fn, state) in scopes:
                    first, ms, (out, stats) = median_ms(fn, (state, x), args.warmup, args.reps)
                    kernels = (device_kernels(fn, (state, x), args.reps)
                               if args.device_time else {})
                    busy = sum(ms for ms, _ in kernels.values()) if kernels else ""
                    check = ""
                    if scope.startswith("1 layer"):  # kernels must agree on the output
                        if reference is None:
                            reference = np.asarray(out, np.float32)
                        else:
                            err = np.linalg.norm(np.asarray(out, np.float32) - reference)
                            check = float(err / max(np.linalg.norm(reference), 1e-30))
                    row = dict(case=label, kernel=kernel, key_splits=splits or "auto",
                               scope=scope, batch=batch, tokens=args.tokens,
                               dtype=jnp.dtype(dtype).name, median_ms=ms, device_ms=busy,
                               first_call_s=first, attention=spec.to_string(),
                               rel_diff_vs_first_kernel=check, kernels=kernels,
                               **cluster_summary(stats))
                    rows.append(row)
                    print(f"{label:40s} {scope:18s} B={batch}: {ms:9.3f} ms {busy} {check}",
                          flush=True)
                    for name, (kms, op) in list(kernels.items())[:args.kernel_top]:
                        print(f"    {kms:8.4f} ms  {len(kernels):3d} kernels  "
                              f"{name[:50]:50s} {op[:90]}")

    print(f"\nDevice: {device}, N={args.tokens}, d={D_MODEL}, {HEADS} heads, "
          f"median of {args.reps}\n")
    print("| case | scope | batch | ms | device ms | mean prototypes | capacity (slots doing work) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        busy = f"{r['device_ms']:.3f}" if r["device_ms"] != "" else ""
        print(f"| {r['case']} | {r['scope']} | {r['batch']} | {r['median_ms']:.3f} | {busy} | "
              f"{r.get('mean_clusters', '')} | {r.get('capacity', '')} |")
    payload = dict(device=device, jax=jax.__version__, tokens=args.tokens, d_model=D_MODEL,
                   heads=HEADS, reps=args.reps, warmup=args.warmup, rows=rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
