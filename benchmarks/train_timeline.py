"""Where a training step's wall time goes: the loop's host phases against the devices' busy time.

    python train.py --config configs/conditional_detr_synthetic.py --workdir runs/prof \\
        --config.train.num_steps=300 '--config.train.profile_steps=(201,250)'
    python benchmarks/train_timeline.py runs/prof/profile

Reads the Perfetto trace that ``train.profile_steps`` writes (``jax.profiler``) and prints,
per traced step: the wall time (the mean period between two steps' dispatches), the time each host phase of the loop took (``train/next_batch``: the input
pipeline; ``train/put``: the host-to-device copies; ``train/dispatch``: the compiled
step's call; ``train/check``: waiting for the previous step's metrics) and, per device,
the time it was busy (the union of its kernel intervals). A device busy for much less than
the wall time waits for the host.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_events import load_events, process_names  # noqa: E402

PHASES = ("train/next_batch", "train/put", "train/dispatch", "train/check")


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total / 1e3


def timeline(trace_dir: str) -> dict:
    """{"steps": traced steps (dispatch count), "wall_ms": wall time per step (the mean
    period between dispatches),
    "phases": {phase: {"median_ms", "mean_ms"}}, "device_busy_ms": {device: busy ms per
    step}} from the trace under ``trace_dir``."""
    events = load_events(trace_dir)
    names = process_names(events)
    devices = {pid: name for pid, name in names.items() if "/device:" in name}
    complete = [e for e in events if e.get("ph") == "X"]
    phases = collections.defaultdict(list)
    for e in complete:
        if e["name"] in PHASES:
            phases[e["name"]].append((float(e["ts"]), float(e.get("dur", 0.0))))
    dispatches = sorted(phases.get("train/dispatch", []))
    if not dispatches:
        raise ValueError(f"{trace_dir}: the trace has no train/dispatch events (is it a "
                         f"trace of train.profile_steps?)")
    steps = len(dispatches)
    begin = dispatches[0][0]
    if steps > 1:  # the period from one step's dispatch to the next, over the window
        end = begin + (dispatches[-1][0] - begin) * steps / (steps - 1)
    else:
        end = max(float(e["ts"]) + float(e.get("dur", 0.0)) for e in complete)
    busy = collections.defaultdict(list)
    for e in complete:
        if e.get("pid") in devices and float(e["ts"]) >= begin:
            busy[devices[e["pid"]]].append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
    return {"steps": steps, "wall_ms": (end - begin) / 1e3 / steps,
            "phases": {name: {"median_ms": statistics.median(d for _, d in values) / 1e3,
                              "mean_ms": statistics.fmean(d for _, d in values) / 1e3}
                       for name, values in phases.items()},
            "device_busy_ms": {name: _union_ms([(a, min(b, end)) for a, b in spans if a < end]) / steps
                               for name, spans in sorted(busy.items())}}


def report(result: dict) -> str:
    lines = [f"{result['steps']} steps traced, {result['wall_ms']:.2f} ms of wall time per step",
             "", "| host phase | median ms | mean ms |", "| --- | --- | --- |"]
    for name in PHASES:
        if name in result["phases"]:
            p = result["phases"][name]
            lines.append(f"| {name} | {p['median_ms']:.2f} | {p['mean_ms']:.2f} |")
    if result["device_busy_ms"]:
        lines += ["", "| device | busy ms per step | share of the wall time |", "| --- | --- | --- |"]
        for name, ms in result["device_busy_ms"].items():
            lines.append(f"| {name} | {ms:.2f} | {ms / result['wall_ms']:.0%} |")
    else:
        lines.append("(no device in the trace: a CPU run)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace_dir", help="train.profile_dir (default <workdir>/profile)")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        result = timeline(args.trace_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
