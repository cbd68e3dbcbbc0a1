"""detr_jax.benchmark helpers (timings themselves run on the device machine, never here)."""

import numpy as np

from detr_jax.attention.stats import LayerStats
from detr_jax.benchmark import cluster_ratios, error_line, format_table


def test_cluster_ratios_average_over_images_and_heads_per_layer():
    # two images (10 and 5 valid tokens), two heads, two layers
    layer0 = LayerStats(num_clusters=np.array([[5, 3], [5, 1]]), num_valid=np.array([10, 5]))
    layer1 = LayerStats(num_clusters=np.array([[10, 10], [5, 5]]), num_valid=np.array([10, 5]))
    ratios = cluster_ratios({"encoder_stats": [layer0, layer1]})
    assert ratios == [round((0.5 + 0.3 + 1.0 + 0.2) / 4, 4), 1.0]


def test_cluster_ratios_are_empty_for_exact_attention():
    assert cluster_ratios({"encoder_stats": [None, None]}) == []
    assert cluster_ratios({}) == []


def test_table_shows_cluster_ratios_when_present():
    row = dict(mode="infer", attention="act:L=32", batch=1, precision="default", median_ms=2.0,
               ms_per_image=2.0, images_per_s=500.0, p10_ms=1.9, p90_ms=2.1,
               peak_memory_mib=None, xla_memory_mib=12.0, compile_s=3.0,
               cluster_ratio=[0.5, 0.25])
    line = format_table([row]).splitlines()[-1]
    assert line.endswith("clusters/tokens per layer: 0.50 0.25")
    del row["cluster_ratio"]
    assert "clusters/tokens" not in format_table([row])


def _kernel_profile_module():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "kernel_profile.py")
    spec = importlib.util.spec_from_file_location("kernel_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_profile_sums_device_events_by_name(tmp_path):
    import gzip
    import json
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
              {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
              {"ph": "X", "pid": 1, "name": "host work", "dur": 900.0},
              {"ph": "X", "pid": 2, "name": "sort", "dur": 100.0},
              {"ph": "X", "pid": 2, "name": "sort", "dur": 50.0},
              {"ph": "X", "pid": 2, "name": "fusion", "dur": 20.0}]
    run = tmp_path / "plugins" / "profile" / "run1"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    module = _kernel_profile_module()
    totals, count = module.device_events(str(tmp_path))
    assert set(totals) == {"sort", "fusion"}  # host events left out
    assert np.isclose(totals["sort"], 0.15) and np.isclose(totals["fusion"], 0.02)  # ms
    assert count == 3 and module.device_event_times(str(tmp_path)) == totals


def test_error_line_names_the_error_not_the_traceback_note():
    stderr = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "jax.errors.JaxRuntimeError: INTERNAL: cuDNN does not support this shape\n"
              "--------------------\n"
              "For simplicity, JAX has removed its internal frames from the traceback of the "
              "following exception. Set JAX_TRACEBACK_FILTERING=off to include these.\n")
    assert error_line(stderr) == "jax.errors.JaxRuntimeError: INTERNAL: cuDNN does not support this shape"
    assert error_line("Killed\n") == "Killed"
    assert error_line("") == "no output"
