"""COCO evaluation of a checkpoint under several encoder-attention settings in one data pass.

:func:`evaluate` plans the batches, runs them through the loop
(:func:`detr_jax.evaluation.loop.predict_rounds`: the backbone once per batch, then each
setting's encoder, decoder and post-processing) and feeds every round to the collectors of
:mod:`detr_jax.evaluation.collectors` (detections, skipped images, timing, cluster
statistics), merged over hosts at the end. JAX's persistent compilation cache
(``enable_compilation_cache``) makes re-runs start fast.

Predictions become COCO results JSON (``detections_to_results``) and are scored with
pycocotools' ``COCOeval`` (``coco_metrics``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time

import jax
import numpy as np

from detr_jax.data.pipeline import iterate_batches, make_layout, plan_steps
from detr_jax.evaluation.collectors import (ClusterStats, Detections, Skipped, Timing,
                                            gather_across_hosts)
from detr_jax.evaluation.loop import SettingsRunner, predict_rounds

METRIC_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
STAT_NAMES = METRIC_NAMES + ("AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")
from detr_jax.compile_cache import DEFAULT_CACHE_DIR, enable_compilation_cache  # noqa: E402,F401


# --------------------------------------------------------------------------- results / metrics


def detections_to_results(image_ids, scores, labels, boxes) -> list[dict]:
    """COCO results entries (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``)
    of every detection. image_ids (B,); scores, labels (B, Q); boxes (B, Q, 4) xyxy pixels.
    Labels are used as category ids (DETR's class index is the COCO category id)."""
    results = []
    for image_id, s, l, b in zip(image_ids, scores, labels, boxes):
        b = np.asarray(b, np.float32)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        for score, label, box in zip(np.asarray(s, np.float32), np.asarray(l), xywh):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [float(v) for v in box], "score": float(score)})
    return results


def coco_metrics(coco_gt, results: list[dict], image_ids=None) -> dict:
    """Run ``COCOeval`` (bbox) of ``results`` against ``coco_gt`` on ``image_ids`` (default:
    every image of the ground truth). Returns AP, AP50, AP75, AP_S, AP_M, AP_L, the 12
    ``stats`` and pycocotools' printed ``summary``."""
    from pycocotools.cocoeval import COCOeval

    from detr_jax.data.coco import coco_from_dict
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            coco_dt = coco_from_dict({"images": list(coco_gt.dataset["images"]),
                                      "annotations": [],
                                      "categories": list(coco_gt.dataset["categories"])})
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    metrics = dict(zip(STAT_NAMES, stats))
    metrics["stats"] = stats
    metrics["summary"] = buffer.getvalue()
    return metrics


# --------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalResult:
    """What one evaluation pass produced (merged over hosts)."""

    settings: list
    detections: dict            # run -> {image_id: (scores (Q,), labels (Q,), boxes (Q, 4))}
    image_ids: list             # evaluated image ids, sorted
    skipped: list               # {"index", "image_id", "path", "reason"}
    num_planned: int            # images the run covered (max_images or the dataset)
    dataset_size: int
    ms_per_image: dict          # run -> [per-round ms per image samples]
    ratio_sums: dict            # run -> (sum over images of per-layer ratio, count) or None
    flops_inputs: list          # first images: {"index", "image_id", "input_hw", "valid_hw", "stats"}
    compiles: int
    compile_seconds: float
    xla_memory: dict            # "backbone" / setting -> bytes (XLA memory analysis) or None
    peak_bytes: int | None      # device peak_bytes_in_use (max over local devices) or None
    devices: list
    layout: str
    batch_size: int
    granularity: int | None
    wall_seconds: float
    encoder_layers: int = 0
    process_count: int = 1
    # setting -> its run names: several hash draws (``loop.draw_name``) for settings with
    # random draws when evaluated with hash_seeds > 1, else [setting]. Per-run fields
    # (detections, ms_per_image, ratio_sums, flops_inputs' stats) are keyed by run name.
    runs: dict | None = None

    def setting_runs(self, setting) -> list[str]:
        """The run names of ``setting`` (``[setting]`` unless it ran several draws)."""
        return list((self.runs or {}).get(setting, [setting]))

    @property
    def partial(self) -> bool:
        return self.num_planned < self.dataset_size

    def prototype_ratios(self, setting) -> list[float] | None:
        entry = self.ratio_sums.get(setting)
        if not entry or not entry[1]:
            return None
        sums, count = entry
        return [float(v) / count for v in sums]

    def results_json(self, setting) -> list[dict]:
        dets = self.detections[setting]
        ids = sorted(dets)
        if not ids:
            return []
        scores, labels, boxes = (np.stack([dets[i][k] for i in ids]) for k in range(3))
        return detections_to_results(ids, scores, labels, boxes)


def peak_device_bytes(devices) -> int | None:
    """Largest ``peak_bytes_in_use`` over ``devices`` (None where not reported, e.g. CPU)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def evaluate(model, source, settings, *, batch_size: int = 1, granularity: int | None = None,
             size: int = 800, max_size: int | None = 1333, seed: int = 0, num_workers: int = 4,
             prefetch: int = 4, max_images: int = 0, skip_bad_images: bool = False,
             flops_images: int = 100, warmup_rounds: int = 1, devices=None,
             progress: bool = True, backend: str = "auto", hash_seeds: int = 1) -> EvalResult:
    """Predict every image of ``source`` (the first ``max_images`` when > 0) under every
    encoder-attention ``settings`` string, sharing the backbone and the data pass.

    ``hash_seeds`` > 1: settings whose spec has ``random_draws`` (ACT, K-means) run that
    many hash draws (``loop.draw_key``), each scored on its own (``EvalResult.runs``)."""
    wall = time.perf_counter()
    settings = list(settings)
    granularity = int(granularity) if granularity else None
    layout = make_layout(granularity, devices, batch_size)
    total = len(source)
    planned = min(int(max_images), total) if max_images and max_images > 0 else total
    steps = plan_steps(layout, source, batch_size=batch_size, granularity=granularity,
                       num_images=planned, size=size, max_size=max_size)
    runner = SettingsRunner(model, settings, layout, seed=seed, hash_seeds=hash_seeds)
    runs = runner.run_names
    batches = iterate_batches(source, steps, size=size, max_size=max_size,
                              granularity=granularity, skip_bad_images=skip_bad_images,
                              num_workers=num_workers, prefetch=prefetch, backend=backend)
    detections, skipped = Detections(runs), Skipped()
    timing, clusters = Timing(runs, warmup_rounds), ClusterStats(runs, flops_images)
    bar = _progress_bar(layout, steps, settings, progress)
    try:
        for round_ in predict_rounds(runner, batches, layout, batch_size):
            for collector in (skipped, timing, detections, clusters):
                collector.update(round_)
            if round_.ran:
                bar.update(sum(b.num_real for b in round_.batches), compiled=round_.compiled)
                if runs and timing.samples[runs[0]]:
                    bar.set_postfix(ms_per_img=f"{timing.median(runs[0]):.1f}", refresh=False)
    finally:
        bar.close()
    merged = gather_across_hosts([c.payload() for c in (detections, skipped, clusters)])
    for position, collector in enumerate((detections, skipped, clusters)):
        collector.merge([part[position] for part in merged])
    return EvalResult(
        settings=settings, detections=detections.detections,
        image_ids=sorted(detections.detections[runs[0]]) if runs else [],
        skipped=skipped.entries, num_planned=planned, dataset_size=total,
        ms_per_image=timing.samples, ratio_sums=clusters.ratio_sums,
        flops_inputs=clusters.ordered_flops_inputs(), compiles=runner.compiles,
        compile_seconds=runner.compile_seconds, xla_memory=dict(runner.memory),
        peak_bytes=peak_device_bytes(layout.devices),
        devices=[str(d) for d in (layout.mesh.devices.flat if layout.mesh is not None
                                  else layout.devices)],
        layout=layout.mode, batch_size=batch_size, granularity=granularity,
        wall_seconds=time.perf_counter() - wall,
        encoder_layers=int(dict(model.config).get("enc_layers", 0)),
        process_count=layout.process_count,
        runs={s: [name for name, _ in runner.runs[s]] for s in settings})


def _progress_bar(layout, steps, settings, progress: bool):
    """A progress bar over this host's real images (disabled off process 0 or without
    progress); it says "compiling" until the first round returns and its rate and ETA leave
    compiling rounds out."""
    from detr_jax.progress import Progress
    mine = sum(1 for step in steps for i in step.indices if i >= 0)
    return Progress(total=mine, unit="img", desc="eval " + "/".join(settings), dynamic_ncols=True,
                disable=not progress or layout.process_index != 0, file=sys.stderr)
