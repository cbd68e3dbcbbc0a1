"""Where a forward pass or a training step spends its device time, kernel by kernel (a
jax.profiler trace).

    python benchmarks/kernel_profile.py --config configs/detr_r50_dc5.py \\
        --attention exact act:L=32,r=4 --batch 1 --size 800x1216 --output kernels.json
    python benchmarks/kernel_profile.py --config configs/detr_r50_dc5.py --mode train --batch 4

For each attention setting: build the config's model (random weights), jit its forward
pass (``--mode train``: the training step of ``python -m detr_jax.benchmark --mode train``,
with its ``--precision``, ``--boxes`` and ``--max-targets``), warm up, then trace ``--reps`` calls with ``jax.profiler`` (a Perfetto trace, read
back here as JSON) and sum the duration of every device event by name. Prints the
``--top`` names per setting (ms per call and share of the busy time) and writes all of
them with ``--output``. Each kernel is attributed to the JAX operation it comes from (the
``op_name`` of the HLO instruction of the same name in the compiled program), so ACT's
pieces (hashing, numbering, means) can be told apart from the rest. For inference it
also prints where the device sat idle (``idle_gaps``: idle time by gap size and by the
kernel each gap preceded; the gap before a call's first kernel is the host's time between
synchronous calls). On a machine without an accelerator the events are the host's XLA
thunks, which still rank the ops but include the CPU runtime's own events.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # forced_act beside this file

from detr_jax.benchmark import parse_size  # noqa: E402
from detr_jax.config_cli import config_for_parser  # noqa: E402
from detr_jax.models.build import build_model  # noqa: E402
from detr_jax.models.inference import Forward  # noqa: E402
import forced_act  # noqa: E402
from trace_events import load_events, process_names  # noqa: E402


def device_events(trace_dir: str) -> tuple[dict[str, float], int]:
    """(summed duration (ms) of the complete events of the trace's device processes (host
    thunks when there is no device process) by event name, the number of those events)."""
    events = load_events(trace_dir)
    names = process_names(events)
    device = {pid for pid, name in names.items() if "/device:" in name}
    pids = device or set(names)
    totals: dict[str, float] = collections.defaultdict(float)
    count = 0
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in pids:
            totals[e["name"]] += float(e.get("dur", 0.0)) / 1e3
            count += 1
    return dict(totals), count


def device_event_times(trace_dir: str) -> dict[str, float]:
    """Summed duration (ms) of the trace's device events by name (:func:`device_events`)."""
    return device_events(trace_dir)[0]


def idle_gaps(trace_dir: str, reps: int, top: int = 12) -> dict:
    """Where the device waits between kernels, over a trace of ``reps`` calls.

    The device events of all streams are merged into busy intervals; every interval
    between them is idle. Returns ms per call of: ``span`` (first kernel start to last
    kernel end, over ``reps``), ``busy``, ``idle`` (in the span), idle time by gap size
    (``"<5us"``, ``"5-20us"``, ``"20-100us"``, ``">=100us"``; the gaps between calls, host
    synchronization and dispatch, fall in the last) and the ``top`` kernels by the idle
    time just before them (the gap a launch did not hide), with gap counts per call.
    """
    events = load_events(trace_dir)
    names = process_names(events)
    device = {pid for pid, name in names.items() if "/device:" in name} or set(names)
    spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), e["name"])
                   for e in events if e.get("ph") == "X" and e.get("pid") in device)
    if not spans:
        return {}
    busy = 0.0
    end = spans[0][0]
    buckets = collections.Counter()
    before = collections.Counter()
    counts = collections.Counter()
    for start, stop, name in spans:
        if start > end:
            gap = start - end
            bucket = ("<5us" if gap < 5 else "5-20us" if gap < 20 else "20-100us" if gap < 100
                      else ">=100us")
            buckets[bucket] += gap / 1e3 / reps
            before[name] += gap / 1e3 / reps
            counts[name] += 1 / reps
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = (end - spans[0][0]) / 1e3 / reps
    return {"span_ms": span, "busy_ms": busy / 1e3 / reps, "idle_ms": span - busy / 1e3 / reps,
            "idle_by_gap_ms": dict(buckets),
            "idle_before_ms": {n: [ms, counts[n]] for n, ms in before.most_common(top)}}


def traced_device_events(call, reps: int, gaps: dict | None = None) -> tuple[dict[str, float], float]:
    """(device milliseconds per call of each event name, device events per call) over a
    trace of ``reps`` calls of ``call()`` (each ended by ``block_until_ready``). With a
    dict ``gaps``, it is filled with :func:`idle_gaps` of the same trace."""
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(reps):
            jax.block_until_ready(call())
        jax.profiler.stop_trace()
        totals, count = device_events(trace_dir)
        if gaps is not None:
            gaps.update(idle_gaps(trace_dir, reps))
        return {name: ms / reps for name, ms in totals.items()}, count / reps


def traced_device_times(call, reps: int) -> dict[str, float]:
    """Device milliseconds per call of each event name (:func:`traced_device_events`)."""
    return traced_device_events(call, reps)[0]


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name (dots as underscores, as kernels are named) -> its JAX op_name."""
    names = {}
    for match in re.finditer(r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo_text):
        names[match.group(1).replace(".", "_").replace("-", "_")] = match.group(2)
    return names


def attribute(kernel: str, op_names: dict[str, str], scopes: int = 4) -> str:
    """op_name of the instruction whose name is the longest prefix of ``kernel``: its
    last ``scopes`` scopes (0: all of it)."""
    best = ""
    for name in op_names:
        if kernel.startswith(name) and len(name) > len(best):
            best = name
    if not best:
        return ""
    if scopes == 0:
        return op_names[best]
    # Drop the jit(...) prefix and nnx's module plumbing: keep the last few scopes.
    return "/".join(op_names[best].split("/")[-scopes:])


def fused_computation(hlo_text: str, kernel: str, max_lines: int = 60) -> str:
    """The HLO of the instruction named like ``kernel`` and of the computation it calls."""
    lines = hlo_text.splitlines()
    pattern = re.compile(r'^\s*(ROOT )?%([\w.\-]+) = ')
    for line in lines:
        match = pattern.match(line)
        if match and match.group(2).replace(".", "_").replace("-", "_") == kernel:
            called = re.search(r'calls=%([\w.\-]+)', line)
            out = [line.strip()[:400]]
            if called:
                start = next((i for i, l in enumerate(lines)
                              if re.match(rf'^\s*%{re.escape(called.group(1))} ', l)), None)
                if start is not None:
                    for body in lines[start:start + max_lines]:
                        out.append("    " + body.strip()[:300])
                        if body.strip() == "}":
                            break
            return "\n".join(out)
    return f"(no instruction named {kernel})"


def profile_setting(cfg, attention: str, batch: int, size, reps: int, seed: int,
                    dump: tuple[str, ...] = ()) -> dict:
    model_cfg = cfg.model.copy_and_resolve_references()
    model_cfg.encoder_attention = attention
    forward = Forward(build_model(model_cfg, seed=seed), return_intermediates=False)
    rng = np.random.default_rng(seed)
    pixels = jnp.asarray(rng.normal(size=(batch, *size, 3)).astype(np.float32))
    mask = jnp.zeros((batch, *size), bool)
    key = jax.random.PRNGKey(seed)
    for _ in range(3):
        jax.block_until_ready(forward(pixels, mask, key))
    gaps: dict = {}
    per_call, events = traced_device_events(lambda: forward(pixels, mask, key), reps, gaps)
    hlo = forward._run.lower(forward.state, pixels, mask, key).compile().as_text()
    return {"attention": attention, "batch": batch, "size": f"{size[0]}x{size[1]}",
            "reps": reps, **kernel_table(per_call, events, hlo, dump), "gaps": gaps}


def kernel_table(per_call: dict[str, float], events: float, hlo: str,
                 dump: tuple[str, ...] = ()) -> dict:
    """A profile's per-kernel part: busy time, the kernels by time, each one's JAX op
    (last scopes and whole op_name), and the HLO of the kernels named in ``dump``."""
    op_names = hlo_op_names(hlo)
    return {"device": jax.devices()[0].device_kind,
            "busy_ms_per_call": sum(per_call.values()), "events_per_call": events,
            "kernels_ms_per_call": dict(sorted(per_call.items(), key=lambda kv: -kv[1])),
            "kernel_sources": {name: attribute(name, op_names) for name in per_call},
            "kernel_op_names": {name: attribute(name, op_names, scopes=0) for name in per_call},
            "kernel_hlo": {name: fused_computation(hlo, name) for name in dump}}


def profile_train(cfg, attention: str, batch: int, size, reps: int, seed: int,
                  precision: str = "default", boxes: int = 7, max_targets: int | None = None,
                  dump: tuple[str, ...] = ()) -> dict:
    """:func:`profile_setting` for the training step the benchmark times (random weights
    and targets; ``boxes`` real targets per image padded to ``max_targets``)."""
    from detr_jax import benchmark
    argv = ["--config", "-", "--size", f"{size[0]}x{size[1]}", "--boxes", str(boxes),
            "--seed", str(seed)] + ([] if max_targets is None else ["--max-targets", str(max_targets)])
    call, step, _ = benchmark.train_step_call(cfg, benchmark.build_parser().parse_args(argv),
                                              attention, batch, precision)
    for _ in range(3):
        jax.block_until_ready(call())
    per_call, events = traced_device_events(call, reps)
    return {"mode": "train", "attention": attention, "batch": batch,
            "size": f"{size[0]}x{size[1]}", "precision": precision, "reps": reps,
            **kernel_table(per_call, events, step.as_text(), dump)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--attention", nargs="+", default=["exact"])
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--precision", default="default", choices=("default", "highest", "bf16"),
                        help="training step (--mode train): as the benchmark's --precision")
    parser.add_argument("--boxes", type=int, default=7, help="training step: targets per image")
    parser.add_argument("--max-targets", type=int, default=None,
                        help="training step: targets padded to this count (default --boxes)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=parse_size, default=(800, 1216))
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="")
    parser.add_argument("--dump", nargs="*", default=[],
                        help="kernel names whose HLO (and called computation) to print")
    args, rest = parser.parse_known_args(argv)
    forced_act.register()  # the timing-only act_forced setting
    cfg = config_for_parser(parser, args.config, rest)
    results = []
    for attention in args.attention:
        if args.mode == "train":
            r = profile_train(cfg, attention, args.batch, args.size, args.reps, args.seed,
                              args.precision, args.boxes, args.max_targets, tuple(args.dump))
        else:
            r = profile_setting(cfg, attention, args.batch, args.size, args.reps, args.seed,
                                tuple(args.dump))
        results.append(r)
        print(f"\n{attention}, {args.mode}, batch {args.batch}, {r['size']} on {r['device']}: "
              f"{r['busy_ms_per_call']:.3f} ms of device events per call "
              f"({r['events_per_call']:.0f} events)")
        print("| ms per call | share | event | JAX operation |\n| --- | --- | --- | --- |")
        for name, ms in list(r["kernels_ms_per_call"].items())[:args.top]:
            print(f"| {ms:.4f} | {ms / r['busy_ms_per_call']:.1%} | {name[:60]} | "
                  f"{r['kernel_sources'].get(name, '')[:110]} |")
        gaps = r.get("gaps")
        if gaps:
            print(f"device span {gaps['span_ms']:.3f} ms per call: busy {gaps['busy_ms']:.3f}, "
                  f"idle {gaps['idle_ms']:.3f} (" + ", ".join(
                      f"{k} {v:.3f}" for k, v in sorted(gaps["idle_by_gap_ms"].items())) + ")")
            print("idle ms before (gaps per call):", "; ".join(
                f"{n[:40]} {ms:.3f} ({c:.0f})" for n, (ms, c) in gaps["idle_before_ms"].items()))
        for name, text in r["kernel_hlo"].items():
            print(f"\nHLO of {name}:\n{text}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
