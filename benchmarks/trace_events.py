"""Reading back the Perfetto trace that ``jax.profiler`` writes (``create_perfetto_trace``)."""

from __future__ import annotations

import glob
import gzip
import json
import os


def load_events(trace_dir: str) -> list[dict]:
    """The events of the newest ``perfetto_trace.json.gz`` under ``trace_dir``."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(max(paths, key=os.path.getmtime)) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def process_names(events: list[dict]) -> dict:
    """pid -> process name (a device's contains ``/device:``)."""
    return {e.get("pid"): e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name"}
