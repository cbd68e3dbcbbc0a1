"""The evaluation report: the ACT paper's Table 1 for each encoder-attention setting.

Per setting: AP, AP50, AP75, AP_S, AP_M, AP_L (COCOeval), backbone and transformer GFLOPs
averaged over the first ``flops_images`` images (the paper's protocol; from the detector's
``flops`` with each image's input and valid size and that setting's encoder statistics), milliseconds per image (median over
batches after warm-up, compiles excluded, divided by the batch size), peak device memory
(``peak_bytes_in_use``; "n/a" where the device reports none, e.g. CPU), the XLA memory
analysis of the setting's compiled functions, and the mean prototype ratio per encoder
layer (clusters / valid tokens, averaged over images and heads; 1.0 for exact attention).

A setting evaluated over several hash draws (``eval.hash_seeds``; ACT, K-means) gets one row
with the mean over its draws of every metric and column, the standard deviation over the
draws (``<metric>_std``, sample standard deviation, ddof 1) and the number of draws
(``draws``); report.json keeps each draw's metrics (``metrics`` per run and ``draws``).

Everything is written into a staging directory and moved into place at the end, the
Markdown report last, so an interrupted run leaves nothing that looks complete. Runs over
part of the dataset (``--max-images``) carry ``partial-N`` in every file name and say so
at the top of the report.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from detr_jax import paths
from detr_jax.evaluation.coco_eval import METRIC_NAMES, EvalResult, coco_metrics


def setting_tag(setting: str) -> str:
    """File-name form of a setting: ``act:L=32`` -> ``act_L32`` (as ``predict_images``)."""
    return (setting.replace(":", "_").replace(",", "_").replace("=", "").replace("/", "-")
            .replace("#", "."))


def file_suffix(result: EvalResult) -> str:
    return f".partial-{result.num_planned}" if result.partial else ""


def detector_flops(model_config):
    """``flops(setting, image_hw, valid_hw, encoder_stats) -> MACs dict``: the FLOPs of the
    detector ``model_config`` describes, behind each setting's encoder attention
    (``Detector.flops`` of a shape-only model; nothing is allocated)."""
    from detr_jax.models.build import build_model
    from detr_jax.models.config import config_from_dict
    config = config_from_dict(dict(model_config))
    shells = {}

    def flops(setting, image_hw, valid_hw, encoder_stats):
        if setting not in shells:
            shells[setting] = build_model(config, encoder_attention=setting, abstract=True)
        return shells[setting].flops(image_hw, valid_hw, encoder_stats)
    return flops


def flops_summary(result: EvalResult, model_config, flops=None) -> dict | None:
    """setting -> {"gflops_backbone", "gflops_transformer", "images"} averaged over the
    first images, or None when the FLOPs cannot be counted. ``flops`` as
    :func:`detector_flops` (its default)."""
    if not result.flops_inputs:
        return None
    flops = flops or detector_flops(model_config)
    summary = {}
    for setting in result.settings:
        backbone, transformer = [], []
        runs = result.setting_runs(setting)  # several hash draws: the mean over them
        for entry, run in ((entry, run) for entry in result.flops_inputs for run in runs):
            if run not in entry["stats"]:
                continue
            try:
                out = flops(setting, tuple(entry["input_hw"]), tuple(entry["valid_hw"]),
                            entry["stats"][run])
            except Exception as err:  # report what we can; say why the column is empty
                print(f"warning: FLOPs count failed for {setting}: {type(err).__name__}: {err}",
                      file=sys.stderr)
                return None
            backbone.append(float(out["gflops_backbone"]))
            transformer.append(float(out["gflops_transformer"]))
        if backbone:
            summary[setting] = {"gflops_backbone": float(np.mean(backbone)),
                                "gflops_transformer": float(np.mean(transformer)),
                                "images": len(backbone) // len(runs)}
    return summary or None


def draw_statistics(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation (ddof 1)) of one metric over a setting's hash
    draws, in the metric's units; negative values (COCOeval's "no such objects") give
    (None, None); the std is None for a single draw."""
    if not values or any(v < 0 for v in values):
        return None, None
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return mean, std


def build_rows(result: EvalResult, metrics: dict, flops: dict | None) -> list[dict]:
    """One row per setting with every column of the report (AP values in percent).

    ``metrics``: COCO metrics per run (``result.setting_runs``; a setting's name when it
    ran once). A setting with several hash draws gets the mean over them, the standard
    deviation in ``<metric>_std`` and their count in ``draws``."""
    rows = []
    for setting in result.settings:
        runs = result.setting_runs(setting)
        row = {"attention": setting}
        for name in METRIC_NAMES:
            mean, std = draw_statistics([100.0 * metrics[run][name] for run in runs])
            row[name] = round(mean, 3) if mean is not None else None
            row[f"{name}_std"] = round(std, 3) if std is not None else None
        row["draws"] = len(runs)
        if flops is not None:
            f = flops.get(setting)
            row["gflops_backbone"] = round(f["gflops_backbone"], 6) if f else None
            row["gflops_transformer"] = round(f["gflops_transformer"], 6) if f else None
            row["gflops_total"] = (round(f["gflops_backbone"] + f["gflops_transformer"], 6)
                                   if f else None)
        samples = [v for run in runs for v in (result.ms_per_image.get(run) or [])]
        row["ms_per_image"] = round(float(np.median(samples)), 3) if samples else None
        row["timed_batches"] = len(samples)
        row["peak_mem_mb"] = (round(result.peak_bytes / 2**20, 1)
                              if result.peak_bytes is not None else None)
        xla = [result.xla_memory.get("backbone"), result.xla_memory.get(setting)]
        xla = [v for v in xla if v is not None]
        row["xla_mem_mb"] = round(max(xla) / 2**20, 1) if xla else None
        per_run = [r for r in (result.prototype_ratios(run) for run in runs) if r is not None]
        ratios = [float(v) for v in np.mean(per_run, axis=0)] if per_run else None
        if ratios is None:  # no clusters: exact attention keeps every token
            ratios = [1.0] * (result.encoder_layers or _num_layers(result))
        row["prototype_ratio"] = [round(r, 4) for r in ratios]
        rows.append(row)
    return rows


def _num_layers(result: EvalResult) -> int:
    for setting in result.settings:
        for run in result.setting_runs(setting):
            ratios = result.prototype_ratios(run)
            if ratios:
                return len(ratios)
    return 0


def _fmt(value, digits=1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value and abs(value) < 0.5:  # tiny models: keep three significant digits
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_draws(row: dict, name: str) -> str:
    """A metric cell: ``mean ± std`` when the row has several hash draws."""
    std = row.get(f"{name}_std")
    if std is None or row[name] is None:
        return _fmt(row[name])
    return f"{_fmt(row[name])} ± {_fmt(std)}"


def status_line(result: EvalResult) -> str:
    evaluated = len(result.image_ids)
    if result.partial:
        text = (f"PARTIAL evaluation: the first {result.num_planned} of {result.dataset_size} "
                f"images (--max-images); not comparable with full-dataset results.")
    else:
        text = f"Full evaluation: all {result.dataset_size} images of the dataset."
    if result.skipped:
        text += (f" {len(result.skipped)} image(s) could not be decoded and were skipped "
                 f"(--skip-bad-images); metrics cover the {evaluated} evaluated images.")
    return text


def render_markdown(rows: list[dict], meta: dict, result: EvalResult) -> str:
    has_flops = rows and "gflops_total" in rows[0]
    lines = [f"# DETR evaluation: {meta['dataset']}", "", f"**{status_line(result)}**", ""]
    lines += [f"- {key}: {value}" for key, value in meta["details"].items()]
    lines.append("")
    header = ["attention", "AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"]
    if has_flops:
        header += ["GFLOPs backbone", "GFLOPs transformer", "GFLOPs"]
    header += ["ms/img", "peak mem (MB)", "XLA mem (MB)", "prototype ratio per layer"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        draws = f" ({row['draws']} draws)" if row.get("draws", 1) > 1 else ""
        cells = [f"`{row['attention']}`{draws}"] + [_fmt_draws(row, n) for n in METRIC_NAMES]
        if has_flops:
            cells += [_fmt(row["gflops_backbone"]), _fmt(row["gflops_transformer"]),
                      _fmt(row["gflops_total"])]
        cells += [_fmt(row["ms_per_image"], 2), _fmt(row["peak_mem_mb"]), _fmt(row["xla_mem_mb"]),
                  " / ".join(f"{r:.3f}" for r in row["prototype_ratio"]) or "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Columns: AP values in percent (COCOeval, bbox). "
              + ("GFLOPs: mean over the first "
                 f"{meta.get('flops_images_used', 'n/a')} images of each image's input size and "
                 "that setting's cluster counts. " if has_flops else
                 "GFLOPs: not shown (detr_jax.flops is not available). ")
              + "ms/img: median over timed batches (after warm-up, batches that compiled "
              "excluded) of the batch time (shared backbone + this setting's encoder, decoder "
              "and post-processing) divided by the batch size. peak mem: the device's "
              "peak_bytes_in_use over the whole run (all settings; n/a on CPU). XLA mem: XLA's "
              "memory analysis of this setting's compiled functions (arguments + outputs + "
              "temporaries, largest of backbone and head). Prototype ratio: clusters / valid "
              "tokens per encoder layer, mean over images and heads (1.0 = exact)."
              + (" Settings marked (N draws): mean ± sample "
                 "standard deviation over the draws (each draw a fresh key for every "
                 "layer's hash parameters); the other columns are means over the draws."
                 if any(r.get("draws", 1) > 1 for r in rows) else ""), ""]
    if result.skipped:
        lines += ["## Skipped images", ""]
        lines += [f"- id {s['image_id']}: {s['path']}: {s['reason']}" for s in result.skipped]
        lines.append("")
    return "\n".join(lines)


def render_csv(rows: list[dict]) -> str:
    layers = max((len(r["prototype_ratio"]) for r in rows), default=0)
    fields = [k for k in rows[0] if k != "prototype_ratio"] if rows else []
    fields += [f"prototype_ratio_layer{i + 1}" for i in range(layers)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: ("" if v is None else v) for k, v in row.items() if k != "prototype_ratio"}
        for i, r in enumerate(row["prototype_ratio"]):
            flat[f"prototype_ratio_layer{i + 1}"] = r
        writer.writerow(flat)
    return buffer.getvalue()


class Staging:
    """Files written into a hidden temporary directory of ``output_dir`` and moved into
    place by :meth:`commit` in the order they were added (put the report last). For an
    ``output_dir`` URL (``gs://...``) they are staged in a local temporary directory and
    uploaded by :meth:`commit`, each file whole."""

    def __init__(self, output_dir: str):
        self.output_dir = paths.makedirs(output_dir)
        self.remote = paths.is_remote(self.output_dir)
        self.directory = (tempfile.mkdtemp(prefix="detr_jax-report-") if self.remote else
                          tempfile.mkdtemp(prefix=".incomplete-", dir=self.output_dir))
        self.names: list[str] = []

    def path(self, name: str) -> str:
        full = os.path.join(self.directory, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if name not in self.names:
            self.names.append(name)
        return full

    def write_text(self, name: str, text: str) -> None:
        with open(self.path(name), "w") as f:
            f.write(text)

    def write_json(self, name: str, value, indent=None) -> None:
        with open(self.path(name), "w") as f:
            json.dump(value, f, indent=indent)

    def commit(self) -> list[str]:
        written = []
        for name in self.names:
            source = os.path.join(self.directory, name)
            if not os.path.exists(source):
                continue
            target = paths.join(self.output_dir, name)
            if self.remote:
                with open(source, "rb") as f:
                    paths.write_bytes(target, f.read())
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            written.append(target)
        shutil.rmtree(self.directory, ignore_errors=True)
        return written

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def draws_summary(result: EvalResult, metrics: dict) -> dict:
    """setting -> {"runs": run names, metric -> per-draw values (percent)} for the
    settings evaluated over several hash draws."""
    out = {}
    for setting in result.settings:
        runs = result.setting_runs(setting)
        if len(runs) > 1:
            out[setting] = {"runs": runs, **{name: [round(100.0 * metrics[r][name], 3)
                                                    for r in runs] for name in METRIC_NAMES}}
    return out


def write_report(output_dir: str, result: EvalResult, coco_gt, *, model=None,
                 model_config=None, source=None, meta: dict | None = None,
                 plots: bool = True, cluster_map_images: int = 0, cluster_map_head: int = 0,
                 size: int = 800, max_size: int | None = 1333, seed: int = 0,
                 flops=None, progress: bool = True) -> dict:
    """Score every setting, write predictions, report (Markdown, CSV, JSON) and plots
    (``progress``: a progress bar for the cluster maps).

    ``flops``: the FLOPs counter (:func:`detector_flops` of the model's config by default).
    Returns {"rows", "metrics", "files"}.
    """
    suffix = file_suffix(result)
    meta = dict(meta or {})
    runs = [run for s in result.settings for run in result.setting_runs(s)]
    metrics = {run: coco_metrics(coco_gt, result.results_json(run), result.image_ids)
               for run in runs}
    config = model_config if model_config is not None else (model.config if model else None)
    flops = flops_summary(result, config, flops) if config is not None else None
    rows = build_rows(result, metrics, flops)
    if flops:
        meta["flops_images_used"] = max(f["images"] for f in flops.values())
    staging = Staging(output_dir)
    try:
        for run in runs:
            staging.write_json(f"predictions.{setting_tag(run)}{suffix}.json",
                               result.results_json(run))
        if plots:
            from detr_jax.evaluation import plots as figures
            figures.plot_ap_vs_gflops(rows, staging.path(f"ap_vs_gflops{suffix}.png"))
            if any(r["prototype_ratio"] for r in rows):
                figures.plot_prototype_ratio(rows, staging.path(f"prototype_ratio{suffix}.png"))
            if cluster_map_images and model is not None and source is not None:
                write_cluster_maps(staging, model, source, result, count=cluster_map_images,
                                   head=cluster_map_head, size=size, max_size=max_size,
                                   seed=seed, suffix=suffix, progress=progress)
        details = {
            "checkpoint": meta.get("checkpoint", "n/a"),
            "images": f"{len(result.image_ids)} evaluated of {result.dataset_size}"
                      + (f" ({len(result.skipped)} skipped)" if result.skipped else ""),
            "devices": f"{len(result.devices)} ({', '.join(result.devices[:4])}"
                       + (", ..." if len(result.devices) > 4 else "") + ")"
                       + (f" on each of {result.process_count} hosts"
                          if result.layout == "per_device" and result.process_count > 1 else "")
                       + (f" over {result.process_count} hosts"
                          if result.layout == "sharded" and result.process_count > 1 else ""),
            "layout": f"{result.layout}, batch size {result.batch_size}, granularity "
                      f"{result.granularity or 'exact shapes'}",
            "compiles": f"{result.compiles} ({result.compile_seconds:.1f} s)",
            "wall time": f"{result.wall_seconds:.1f} s",
            "seed": seed,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        details.update(meta.get("details", {}))
        summary = {
            "status": "partial" if result.partial else "complete",
            "status_line": status_line(result), "dataset": meta.get("dataset", "n/a"),
            "details": details, "rows": rows,
            "metrics": {s: {k: v for k, v in m.items() if k != "summary"}
                        for s, m in metrics.items()},
            "skipped": result.skipped, "num_planned": result.num_planned,
            "dataset_size": result.dataset_size, "image_count": len(result.image_ids),
            "ms_per_image_samples": result.ms_per_image, "flops": flops,
            "draws": draws_summary(result, metrics),
        }
        staging.write_json(f"report{suffix}.json", _jsonable(summary), indent=2)
        staging.write_text(f"report{suffix}.csv", render_csv(rows))
        staging.write_text(f"report{suffix}.md", render_markdown(
            rows, {"dataset": meta.get("dataset", "n/a"), "details": details,
                   "flops_images_used": meta.get("flops_images_used")}, result))
        files = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return {"rows": rows, "metrics": metrics, "files": files}


def write_cluster_maps(staging: Staging, model, source, result: EvalResult, *, count: int,
                       head: int, size: int, max_size: int | None, seed: int, suffix: str,
                       progress: bool = True):
    """Figure 6 for the first ``count`` evaluated images and every clustered setting.

    Each image is padded to the input size its evaluation batch had (the granularity's
    bucket otherwise), so all images of one bucket share one executable, and the
    assignments of every clustered setting come from one jitted function of the shared
    state (:func:`detr_jax.evaluation.plots.settings_assignments`): one compile per
    bucket shape (from the persistent compilation cache on a re-run). A progress bar
    counts the maps.
    """
    import jax
    from flax import nnx
    from detr_jax.attention import parse_attention
    from detr_jax.data.collate import pad_images
    from detr_jax.data.normalize import normalize_host
    from detr_jax.data.transforms import resize, to_pil_rgb
    from detr_jax.evaluation.plots import default_tokens, plot_cluster_maps, settings_assignments
    from detr_jax.models.build import with_encoder_attention
    from detr_jax.models.detector import encoder_key
    from detr_jax.models.inference import on_device
    from detr_jax.progress import Progress

    clustered = [s for s in result.settings if parse_attention(s) != parse_attention("exact")]
    if not clustered:
        return
    evaluated = set(result.image_ids)
    indices = [r.index for r in source.records if r.image_id in evaluated][:count]
    if not indices:
        return
    input_hw = {int(e["index"]): tuple(int(v) for v in e["input_hw"])
                for e in result.flops_inputs}
    bar = Progress(total=len(indices) * len(clustered), unit="map", desc="cluster maps",
                   dynamic_ncols=True, disable=not progress, file=sys.stderr)
    try:
        encoder_rng = encoder_key(jax.random.key(seed))
        state = on_device(nnx.split(model)[1])  # not copied again per image
        graphdefs = {s: nnx.split(with_encoder_attention(model, parse_attention(s)))[0]
                     for s in clustered}
        assign = jax.jit(lambda st, px, m, rng: settings_assignments(graphdefs, st, px, m, rng))
        for index in indices:
            example = source[index]
            resized = np.asarray(resize(to_pil_rgb(example.image), size, max_size), np.uint8)
            shape = input_hw.get(int(index))
            if shape is None or shape[0] < resized.shape[0] or shape[1] < resized.shape[1]:
                shape = None  # the granularity's bucket (exact size without one)
            pixels, mask = pad_images([resized], shape, result.granularity)
            pixel_values = np.where(mask[..., None], np.float32(0), normalize_host(pixels))
            bar.begin(key=pixel_values.shape)
            per_setting, feature_hw = assign(state, pixel_values, mask, encoder_rng)
            feature_hw = tuple(int(v) for v in feature_hw)
            stride = int(round(pixel_values.shape[1] / feature_hw[0]))
            resized_hw = tuple(int(v) for v in resized.shape[:2])
            # the padded feature map's rows and columns that cover the image
            valid_hw = tuple(min(f, -(-r // stride)) for f, r in zip(feature_hw, resized_hw))
            tokens = default_tokens(example, resized_hw, valid_hw, stride)
            first = True
            for setting in clustered:
                ids = [None if i is None else _crop_tokens(np.asarray(i)[0], feature_hw, valid_hw)
                       for i in per_setting[setting]]
                if any(i is not None for i in ids):
                    name = f"cluster_maps{suffix}/{example.image_id}.{setting_tag(setting)}.png"
                    plot_cluster_maps(example.image, resized_hw, valid_hw, stride, ids, tokens,
                                      staging.path(name), head=head,
                                      title=f"{setting}, image {example.image_id}, head {head}")
                bar.update(1, compiled=None if first else False)
                first = False
    finally:
        bar.close()


def _crop_tokens(ids: np.ndarray, feature_hw, valid_hw) -> np.ndarray:
    """(H, h * w) cluster ids of a padded feature map -> (H, vh * vw) of its top-left
    ``valid_hw`` part (the image; padding tokens are -1 anyway)."""
    heads = ids.shape[0]
    return ids.reshape(heads, *feature_hw)[:, :valid_hw[0], :valid_hw[1]].reshape(heads, -1)
