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


METHOD_NAMES = {"exact": "exact", "act": "ACT", "kmeans": "K-means", "enact": "ENACT",
                "act_forced": "ACT, forced ratios"}
# The parameter each method's curve sweeps (the ACT paper's Figure 5: ACT over L, K-means
# over C; ENACT over its Gaussian's sigma).
SWEEP_KEYS = {"act": "L", "kmeans": "C", "enact": "sigma", "act_forced": "ratios"}
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
LINESTYLES = ["-", "--", ":", "-."]


def _canonical(setting: str) -> str:
    """The setting with its defaults written out (``act`` -> ``act:L=32,r=8``) when the
    attention registry knows it; else the string as given."""
    try:
        from detr_jax.attention import parse_attention
        spec = parse_attention(setting)
        return spec.to_string() if hasattr(spec, "to_string") else setting
    except Exception:  # unknown to this build (e.g. rows read from another version)
        return setting


def sweep_of(setting: str) -> tuple[str, str | None, str | None, tuple]:
    """(method, sweep key, sweep value, the other parameters as sorted (key, value) pairs)
    of a setting string: ``act:L=24,r=8`` -> ``("act", "L", "24", (("r", "8"),))``."""
    name, _, args = _canonical(setting).partition(":")
    params = dict(item.partition("=")[::2] for item in args.split(",") if item)
    key = SWEEP_KEYS.get(name)
    value = params.pop(key, None) if key else None
    return name, key if value is not None else None, value, tuple(sorted(params.items()))


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def method_lines(rows: list[dict]) -> dict:
    """Rows grouped into the curves of Figure 5: (model label, method, fixed parameters) ->
    list of (row, sweep key, sweep value). A row's model label is its optional ``"model"``
    field (e.g. ``"MTKD"`` for a fine-tuned checkpoint; none for the evaluated one)."""
    groups: dict = {}
    for row in rows:
        method, key, value, fixed = sweep_of(row["attention"])
        groups.setdefault((row.get("model") or "", method, fixed), []).append((row, key, value))
    return groups


def _line_label(model: str, method: str, key, fixed, groups) -> str:
    label = METHOD_NAMES.get(method, method)
    if key:
        label += f" over {key}"
    siblings = [g for g in groups if g[0] == model and g[1] == method]
    if len(siblings) > 1 and fixed:
        label += " (" + ", ".join(f"{k}={v}" for k, v in fixed) + ")"
    return label + (f" [{model}]" if model else "")


def ap_vs_gflops_figure(rows: list[dict], *, title: str = ""):
    """The figure of :func:`plot_ap_vs_gflops` (returned open, for saving or inspection)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    use_flops = bool(rows) and all(r.get("gflops_total") is not None for r in rows)
    x_field = "gflops_total" if use_flops else "ms_per_image"
    groups = method_lines(rows)
    methods = sorted({m for _, m, _ in groups if m != "exact"})
    models = sorted({model for model, _, _ in groups})
    for model, method, fixed in sorted(groups, key=lambda g: (g[0], g[1] != "exact", g[1], g[2])):
        points = [(row[x_field], row["AP"], key, value)
                  for row, key, value in groups[model, method, fixed]
                  if row.get(x_field) is not None and row.get("AP") is not None]
        if not points:
            continue
        style = LINESTYLES[models.index(model) % len(LINESTYLES)]
        label = _line_label(model, method, points[0][2], fixed, groups)
        if method == "exact":  # the reference: a point and a horizontal line at its AP
            for x, y, _, _ in points:
                ax.axhline(y, color="black", linestyle=style, linewidth=0.8, alpha=0.6)
                ax.plot([x], [y], marker="*", markersize=13, color="black", linestyle=style,
                        linewidth=0.8, markerfacecolor="black" if not model else "white",
                        label=label + f" ({y:.1f} AP)", zorder=4)
            continue
        points.sort(key=lambda p: (p[0], _number(p[3]) or 0.0))
        index = methods.index(method)
        ax.plot([p[0] for p in points], [p[1] for p in points], color=PALETTE[index % len(PALETTE)],
                marker=MARKERS[models.index(model) % len(MARKERS)], linestyle=style, label=label,
                zorder=3)
        for x, y, key, value in points:
            if key:
                ax.annotate(f"{key}={value}", (x, y), textcoords="offset points", xytext=(4, -11),
                            fontsize=7, color=PALETTE[index % len(PALETTE)])
    ax.set_xlabel("GFLOPs (backbone + transformer), mean over the first images" if use_flops
                  else "ms per image (median)")
    ax.set_ylabel("AP (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or ("AP vs GFLOPs" if use_flops else "AP vs time"), fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  title="method (sweep)", title_fontsize=8)
    return fig


def plot_ap_vs_gflops(rows: list[dict], path: str, *, title: str = "") -> str:
    """AP against total GFLOPs (backbone + transformer) as the ACT paper's Figure 5: one line
    per method over its sweep (ACT over L, K-means over C, ENACT over sigma), points marked
    with the sweep value, exact attention as a star with a horizontal line at its AP; rows
    with a ``"model"`` label (e.g. MTKD fine-tuned) get their own lines. Against ms per
    image when no FLOPs are known. The legend sits right of the axes."""
    plt = _pyplot()
    fig = ap_vs_gflops_figure(rows, title=title)
    _save(fig, path)
    plt.close(fig)
    return path


def prototype_ratio_figure(rows: list[dict], *, title: str = ""):
    """The figure of :func:`plot_prototype_ratio` (returned open)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    for row in rows:
        ratios = row.get("prototype_ratio")
        if not ratios:
            continue
        layers = np.arange(1, len(ratios) + 1)
        exact = sweep_of(row["attention"])[0] == "exact"
        label = row["attention"] + (f" [{row['model']}]" if row.get("model") else "")
        ax.plot(layers, ratios, marker="*" if exact else "o",
                color="black" if exact else PALETTE[drawn % len(PALETTE)],
                linestyle="--" if exact else "-", label=label, zorder=4 if exact else 3)
        drawn += 0 if exact else 1
        ax.set_xticks(layers)
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("prototypes / tokens")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  title="attention", title_fontsize=8)
    ax.set_title(title or "prototype ratio per layer (clusters / valid tokens; 1 = exact)",
                 fontsize=10)
    return fig


def plot_prototype_ratio(rows: list[dict], path: str, *, title: str = "") -> str:
    """Mean prototype ratio (clusters / tokens) per encoder layer, one line per setting
    (exact dashed at 1.0); the legend sits right of the axes."""
    plt = _pyplot()
    fig = prototype_ratio_figure(rows, title=title)
    _save(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- cluster maps


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
        ids = attention.assignments(queries, keys, values, mask, attn_rng)
        per_layer.append(None if ids is None else ids.reshape(queries.shape[0], -1, h * w))
    return per_layer, (h, w)


def settings_assignments(graphdefs: dict, state, pixel_values, padding_mask, encoder_rng):
    """:func:`cluster_assignments` of several encoder-attention variants of one detector in
    one traceable function (jit it once for all of them; XLA shares the backbone they have
    in common).

    graphdefs: setting -> ``nnx.split`` graph of that variant; state: their shared state
    (the variants hold the same arrays). Returns {setting: list per encoder layer of
    (B, H, N) int arrays or None} and the feature map's (h, w).
    """
    from flax import nnx
    out, feature_hw = {}, None
    for setting, graphdef in graphdefs.items():
        ids, feature_hw = cluster_assignments(nnx.merge(graphdef, state), pixel_values,
                                              padding_mask, encoder_rng)
        out[setting] = ids
    return out, feature_hw


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


CLUSTER_RGB = (255, 60, 30)  # overlay colour of the chosen token's cluster


def cluster_maps_figure(image: np.ndarray, resized_hw, feature_hw, stride: int, ids_per_layer,
                        tokens, *, head: int = 0, title: str = "", layers=None):
    """The figure of :func:`plot_cluster_maps` (returned open), or None when no layer has
    clusters or no token is given."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
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
                             figsize=(2.4 * len(layer_list),
                                      2.6 * len(tokens) * rh / max(rw, 1) + 1.2))
    colour = np.array(CLUSTER_RGB, np.float32)
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
            overlay[big] = 0.35 * shown[big] + 0.65 * colour
            ax.imshow(overlay.astype(np.uint8))
            ax.scatter([(tx + 0.5) * stride], [(ty + 0.5) * stride], marker="*", s=80,
                       c="yellow", edgecolors="black", linewidths=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"layer {layer + 1}", fontsize=8)
            ax.set_xlabel(f"cluster: {int(member.sum())} of {int((ids >= 0).sum())} tokens",
                          fontsize=7, labelpad=2)
            if col == 0:
                ax.set_ylabel(f"token (row {ty}, col {tx})", fontsize=7)
    handles = [Line2D([], [], marker="*", linestyle="none", markersize=11,
                      markerfacecolor="yellow", markeredgecolor="black", markeredgewidth=0.5,
                      label="chosen token"),
               Patch(facecolor=colour / 255,
                     label=f"tokens in its cluster (that layer, head {head})"),
               Patch(facecolor=(0.6, 0.6, 0.6), label="other tokens (dimmed)")]
    fig.tight_layout(rect=(0, 0.0, 1, 0.97))
    renderer = fig.canvas.get_renderer()
    bottom = min(fig.transFigure.inverted().transform(ax.get_tightbbox(renderer))[0, 1]
                 for ax in axes.flat)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, bottom - 0.01),
               ncol=3, fontsize=7, frameon=False,
               title=f"Each panel: the tokens sharing the chosen token's cluster in that layer "
                     f"(head {head}); below it, that cluster's size", title_fontsize=7)
    fig.suptitle(title or f"clusters (head {head})", fontsize=9)
    return fig


def plot_cluster_maps(image: np.ndarray, resized_hw, feature_hw, stride: int, ids_per_layer,
                      tokens, path: str, *, head: int = 0, title: str = "",
                      layers=None) -> str | None:
    """Rows: chosen tokens; columns: encoder layers. Each panel shows the (resized) image
    with the chosen token (yellow star) and the tokens of its cluster in that layer and
    ``head`` (orange; the rest dimmed), that cluster's size below the panel, and a legend
    saying so under the figure. None when there is nothing to show."""
    plt = _pyplot()
    fig = cluster_maps_figure(image, resized_hw, feature_hw, stride, ids_per_layer, tokens,
                              head=head, title=title, layers=layers)
    if fig is None:
        return None
    _save(fig, path)
    plt.close(fig)
    return path
