"""Figures of an evaluation (matplotlib, Agg): AP against GFLOPs (the ACT paper's Figure 5),
prototype ratio per encoder layer (Figure 7) and cluster maps of chosen tokens (Figure 6).

Cluster maps need each token's cluster in a given layer and head. The attention modules
report only cluster counts, so :func:`cluster_assignments` re-runs the encoder layer by
layer with the evaluation's PRNG key (``Detector.encoder_attention_inputs``) and asks each
layer's attention module (``Detector.encoder_attention_layers``) for the assignments it
attends with. A variant without clusters gives no map.
"""

from __future__ import annotations

import io
import os

import numpy as np

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    """Write the figure as PNG atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)


def plot_ap_vs_gflops(rows: list[dict], path: str, *, title: str = "") -> str:
    """AP against total GFLOPs (backbone + transformer) per setting; against ms per image
    when no FLOPs are known."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    use_flops = all(r.get("gflops_total") is not None for r in rows)
    for i, row in enumerate(rows):
        x = row["gflops_total"] if use_flops else row.get("ms_per_image")
        y = row.get("AP")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], color=PALETTE[i % len(PALETTE)], s=40, zorder=3)
        ax.annotate(row["attention"], (x, y), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.set_xlabel("GFLOPs (backbone + transformer), mean over the first images" if use_flops
                  else "ms per image (median)")
    ax.set_ylabel("AP")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or ("AP vs GFLOPs" if use_flops else "AP vs time"), fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_prototype_ratio(rows: list[dict], path: str, *, title: str = "") -> str:
    """Mean prototype ratio (clusters / tokens) per encoder layer, one line per setting."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, row in enumerate(rows):
        ratios = row.get("prototype_ratio")
        if not ratios:
            continue
        layers = np.arange(1, len(ratios) + 1)
        ax.plot(layers, ratios, marker="o", color=PALETTE[i % len(PALETTE)],
                label=row["attention"])
        ax.set_xticks(layers)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("prototypes / tokens")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "prototype ratio per layer", fontsize=10)
    _save(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- cluster maps


def _assignment_ids(attention, queries, keys, values, key_padding_mask, rng):
    """(B*H, N) cluster ids of one layer's attention module called with these arguments,
    or None for variants without clusters. Uses the module's own clustering so the ids
    are the ones it attends with."""
    q, k, _ = attention.project(queries, keys, values)
    hook = getattr(attention, "cluster_assignments", None)
    if callable(hook):  # a variant that exposes its assignments directly
        return hook(q, k, key_padding_mask, rng)
    from detr_jax.attention.clustering import row_valid, to_rows
    batch, n, heads, _ = q.shape
    valid = row_valid(key_padding_mask, batch, heads, n)
    try:
        from detr_jax.attention.act import ACTAttention
    except ImportError:
        ACTAttention = ()
    try:
        from detr_jax.attention.kmeans import KMeansAttention, hamming_codes, kmeans_ids
    except ImportError:
        KMeansAttention = ()
    if ACTAttention and isinstance(attention, ACTAttention):
        side = "Q" if "Q" in attention.spec.group else "K"
        ids = attention.clusters(q if side == "Q" else k, key_padding_mask, rng, side)[0]
        return ids
    if KMeansAttention and isinstance(attention, KMeansAttention):
        codes = hamming_codes(to_rows(q), *attention.hash_params(rng))
        return kmeans_ids(codes, valid, attention.spec.clusters, attention.spec.iterations)
    return None


def cluster_assignments(model, pixel_values, padding_mask, encoder_rng):
    """Per encoder layer, each token's cluster: a list of (B, H, N) int arrays (-1 on
    padding) or None for layers without clusters, and the feature map's (h, w).

    model: a detector (``detr_jax.models.Detector``); encoder_rng: the key its encoder
    receives (``detr_jax.models.detector.encoder_key`` of the key given to the model), so
    these are the clusters the model used.
    """
    calls, (h, w) = model.encoder_attention_inputs(pixel_values, padding_mask, encoder_rng)
    per_layer = []
    for attention, (queries, keys, values, mask, attn_rng) in zip(
            model.encoder_attention_layers(), calls):
        ids = _assignment_ids(attention, queries, keys, values, mask, attn_rng)
        per_layer.append(None if ids is None else ids.reshape(queries.shape[0], -1, h * w))
    return per_layer, (h, w)


def default_tokens(example, resized_hw, feature_hw, stride, count: int = 3):
    """Tokens (row, col) of the feature map to show: centres of the largest non-crowd
    ground-truth boxes, else points across the image."""
    rh, rw = resized_hw
    fh, fw = feature_hw
    scale_y, scale_x = rh / example.height, rw / example.width
    points = []
    if len(example.boxes):
        boxes = example.boxes[~example.iscrowd] if example.iscrowd.any() else example.boxes
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for b in boxes[np.argsort(-areas)][:count]:
            points.append(((b[1] + b[3]) / 2 * scale_y, (b[0] + b[2]) / 2 * scale_x))
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75), (0.25, 0.75)):
        if len(points) >= count:
            break
        points.append((fy * rh, fx * rw))
    tokens = []
    for y, x in points:
        token = (min(int(y // stride), fh - 1), min(int(x // stride), fw - 1))
        if token not in tokens:
            tokens.append(token)
    return tokens


def plot_cluster_maps(image: np.ndarray, resized_hw, feature_hw, stride: int, ids_per_layer,
                      tokens, path: str, *, head: int = 0, title: str = "",
                      layers=None) -> str | None:
    """Rows: chosen tokens; columns: encoder layers. Each panel shows the (resized) image
    with the tokens of the chosen token's cluster (layer, ``head``) coloured."""
    from PIL import Image
    plt = _pyplot()
    layer_list = [l for l in (layers if layers is not None else range(len(ids_per_layer)))
                  if ids_per_layer[l] is not None]
    if not layer_list or not tokens:
        return None
    rh, rw = resized_hw
    fh, fw = feature_hw
    shown = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    fig, axes = plt.subplots(len(tokens), len(layer_list), squeeze=False,
                             figsize=(2.4 * len(layer_list), 2.4 * len(tokens) * rh / max(rw, 1) + 0.4))
    for row, (ty, tx) in enumerate(tokens):
        for col, layer in enumerate(layer_list):
            ax = axes[row][col]
            all_heads = np.asarray(ids_per_layer[layer]).reshape(-1, fh, fw)
            ids = all_heads[min(head, all_heads.shape[0] - 1)]
            cluster = ids[ty, tx]
            member = (ids == cluster) & (ids >= 0)
            big = np.kron(member, np.ones((stride, stride), bool))[:rh, :rw]
            big = np.pad(big, ((0, max(0, rh - big.shape[0])), (0, max(0, rw - big.shape[1]))))
            overlay = shown.astype(np.float32) * 0.6
            overlay[big] = 0.35 * shown[big] + 0.65 * np.array([255, 60, 30], np.float32)
            ax.imshow(overlay.astype(np.uint8))
            ax.scatter([(tx + 0.5) * stride], [(ty + 0.5) * stride], marker="*", s=80,
                       c="yellow", edgecolors="black", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"layer {layer + 1}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"token ({ty},{tx})\n{int(member.sum())} in cluster", fontsize=7)
    fig.suptitle(title or f"clusters (head {head})", fontsize=9)
    _save(fig, path)
    plt.close(fig)
    return path
