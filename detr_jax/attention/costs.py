"""Multiply-accumulate counting rules shared by the FLOPs counter and the attention specs.

The convention is the ACT paper's (see ``detr_jax.flops``): a fully connected layer costs
``rows x in x out`` MACs plus one per output for its bias; attention products cost
``Nq x Nk x Dh`` for ``Q K^T`` and as much for the weighted sum of values, per head.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detr_jax.attention.stats import LayerStats


def linear_macs(rows: int, in_features: int, out_features: int, *, bias: bool = True) -> int:
    """MACs of a fully connected layer applied to ``rows`` vectors (+ bias adds)."""
    return rows * out_features * (in_features + (1 if bias else 0))


def attention_product_macs(num_queries: float, num_keys: float, d_model: int) -> float:
    """``Q K^T`` plus ``A V`` over all heads: ``2 Nq Nk Dh`` per head = ``2 Nq Nk d``."""
    return 2.0 * num_queries * num_keys * d_model


def mha_projection_macs(num_queries: int, num_keys: int, d_model: int, *, bias: bool = True) -> int:
    """q and output projections on the queries, k and v projections on the keys."""
    return (2 * linear_macs(num_queries, d_model, d_model, bias=bias)
            + 2 * linear_macs(num_keys, d_model, d_model, bias=bias))


def exact_layer_flops(d_model: int, valid_tokens: int) -> dict:
    """One exact-attention layer per image: every valid token attends to every valid one."""
    return {"products": attention_product_macs(valid_tokens, valid_tokens, d_model),
            "hashing_and_clustering": 0.0, "mean_clusters": float(valid_tokens),
            "cluster_ratio": 1.0}


def layer_clusters(stats: Any, heads: int, valid_tokens: int, field: str = "num_clusters"):
    """Per-image (cluster counts per head (B, H), valid tokens (B,)) of one layer.

    ``stats`` is the layer's :class:`LayerStats` (``field`` (B, H) or (B,), ``num_valid``
    (B,)), a dict ``{"cluster_ratio": r}`` (fraction of the valid tokens, every head), or a
    number (mean cluster count per head). float64 arrays.
    """
    if isinstance(stats, LayerStats) and getattr(stats, field) is not None:
        counts = np.asarray(getattr(stats, field), dtype=np.float64)
        if counts.ndim == 0:                      # one mean count for every head
            counts = np.full((1, heads), float(counts))
        elif counts.ndim == 1:                    # (H,) of one image, else (B,) means
            counts = (counts.reshape(1, -1) if counts.size == heads
                      else np.repeat(counts[:, None], heads, axis=1))
        else:
            counts = counts.reshape(counts.shape[0], -1)
        if stats.num_valid is not None:
            valid = np.asarray(stats.num_valid, dtype=np.float64).reshape(-1)
        else:
            valid = np.full(counts.shape[0], float(valid_tokens))
        return counts, valid
    if isinstance(stats, dict) and "cluster_ratio" in stats:
        ratio = float(stats["cluster_ratio"])
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"cluster_ratio must lie in (0, 1], got {ratio}")
        return np.full((1, heads), ratio * valid_tokens), np.array([float(valid_tokens)])
    if isinstance(stats, (int, float, np.integer, np.floating)):
        return np.full((1, heads), float(stats)), np.array([float(valid_tokens)])
    raise ValueError(f"encoder stats entry must be a LayerStats with {field} (the model's "
                     f"encoder_stats), {{'cluster_ratio': r}}, or a number; got {stats!r}")
