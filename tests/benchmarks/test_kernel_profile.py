"""kernel_profile's idle-gap summary, on a hand-made trace."""

import gzip
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from kernel_profile import idle_gaps  # noqa: E402


def write_trace(folder, events):
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
    with gzip.open(os.path.join(folder, "perfetto_trace.json.gz"), "wt") as f:
        json.dump({"traceEvents": meta + events}, f)


def kernel(name, ts, dur, pid=1, tid=7):
    return {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}


def test_gaps_merge_streams_and_are_charged_to_the_next_kernel(tmp_path):
    # two calls: a: 0-10, b on another stream 5-20 (overlaps a), gap 3 us, c: 23-30;
    # 200 us between calls (host), then a again 230-240, c 242-250; host events ignored
    write_trace(str(tmp_path), [
        kernel("a", 0, 10), kernel("b", 5, 15, tid=8), kernel("c", 23, 7),
        kernel("host_thing", 30, 500, pid=2),
        kernel("a", 230, 10), kernel("c", 242, 8)])
    gaps = idle_gaps(str(tmp_path), reps=2)
    assert gaps["span_ms"] == pytest.approx(250 / 1e3 / 2)
    assert gaps["busy_ms"] == pytest.approx((20 + 7 + 10 + 8) / 1e3 / 2)
    assert gaps["idle_ms"] == pytest.approx((3 + 200 + 2) / 1e3 / 2)
    assert gaps["idle_by_gap_ms"] == pytest.approx({"<5us": 5 / 1e3 / 2, ">=100us": 200 / 1e3 / 2})
    ms, count = gaps["idle_before_ms"]["a"]
    assert ms == pytest.approx(0.1) and count == pytest.approx(0.5)
    ms, count = gaps["idle_before_ms"]["c"]
    assert ms == pytest.approx(5 / 1e3 / 2) and count == pytest.approx(1.0)
    assert "b" not in gaps["idle_before_ms"]  # it started while a ran
