"""How evaluation reads the encoder's per-layer statistics, in one place.

The encoder returns one entry per layer: None (exact attention) or a
:class:`~detr_jax.attention.stats.LayerStats` with ``num_clusters`` (B, H), ``num_valid``
(B,) and optionally ``capacity`` (). Evaluation reads them only through
:func:`read_layer_stats` and rebuilds one image's statistics for the FLOPs counter with
:func:`image_layer_stats`.
"""

from __future__ import annotations

from detr_jax.attention.stats import LayerStats


def read_layer_stats(stats: LayerStats | None):
    """(num_clusters (B, H), num_valid (B,), capacity () or None) of one layer, or None
    when the layer reports no clusters (None, or an empty entry)."""
    if not stats or getattr(stats, "num_clusters", None) is None:
        return None
    return stats.num_clusters, stats.num_valid, stats.capacity


def image_layer_stats(num_clusters, num_valid, capacity=None) -> LayerStats:
    """One image's statistics of one layer, as the encoder reports them (batch of 1):
    num_clusters (H,), num_valid () and capacity () or None."""
    return LayerStats(num_valid=num_valid[None], num_clusters=num_clusters[None],
                      capacity=capacity)
