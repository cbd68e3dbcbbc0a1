"""How evaluation reads the encoder's per-layer statistics, in one place.

The encoder returns one entry per layer: None (exact attention) or the layer's statistics
with ``num_clusters`` (B, H), ``num_valid`` (B,) and optionally ``capacity`` (). Evaluation
reads them only through :func:`read_layer_stats` (attribute access) and rebuilds one
image's statistics for the FLOPs counter with :func:`image_layer_stats`.
"""

from __future__ import annotations

import types

_FIELDS = ("num_valid", "num_clusters", "num_key_clusters", "capacity")


def _as_attributes(stats):
    """Attribute view of a statistics mapping (None stays None)."""
    if stats is None or not isinstance(stats, dict):
        return stats
    return types.SimpleNamespace(**{f: stats.get(f) for f in _FIELDS})


def read_layer_stats(stats):
    """(num_clusters (B, H), num_valid (B,), capacity () or None) of one layer, or None
    when the layer reports no clusters."""
    view = _as_attributes(stats)
    if view is None or getattr(view, "num_clusters", None) is None:
        return None
    return view.num_clusters, view.num_valid, getattr(view, "capacity", None)


def image_layer_stats(num_clusters, num_valid, capacity=None):
    """One image's statistics of one layer, as the encoder reports them (batch of 1):
    num_clusters (H,), num_valid () and capacity () or None."""
    stats = {"num_clusters": num_clusters[None], "num_valid": num_valid[None]}
    if capacity is not None:
        stats["capacity"] = capacity
    return stats
