"""COCO evaluation of a checkpoint under several encoder-attention settings in one data pass.

Per batch, the backbone runs once (``DETR.backbone_features``); then, for each setting, the
encoder and decoder of that setting's model (``with_encoder_attention``: same arrays) and
the official post-processing. Functions are compiled ahead of time per input shape (one
executable per bucket shape, and per device in the per-device layout), so compiles are
counted, timed, kept out of the time per image, and their XLA memory analysis is known;
JAX's persistent compilation cache (``enable_compilation_cache``) makes re-runs start fast.

Every call gets the same explicit PRNG key, derived from ``seed`` as ``DETR.__call__``
derives its encoder key, so ACT / K-means draws are deterministic and a prediction here
equals ``model(pixels, mask, rng=jax.random.key(seed))`` on the same padded batch.

Predictions become COCO results JSON (``detections_to_results``) and are scored with
pycocotools' ``COCOeval`` (``coco_metrics``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import sys
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.sharding import replicate
from flax import nnx

from detr_jax.data.pipeline import (Layout, host_rows, iterate_batches, make_layout, plan_steps,
                                    to_device)
from detr_jax.evaluation.postprocess import postprocess_arrays

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


# --------------------------------------------------------------------------- the runner


def _tree_signature(tree) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None))
                 for x in jax.tree.leaves(tree))


# Compiled executables per model (weakly held), shared by every evaluation of that model
# in this process: key (setting or "backbone", argument shapes, dtypes and shardings).
_EXECUTABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _memory_bytes(compiled) -> int | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


class SettingsRunner:
    """Compiled backbone shared by several encoder-attention settings of one model."""

    def __init__(self, model, settings, layout: Layout, *, seed: int = 0):
        from detr_jax.attention import parse_attention
        from detr_jax.models.build import with_encoder_attention

        self.settings = list(settings)
        self.layout = layout
        base_graphdef, state = nnx.split(model)
        self.graphdefs = {}
        for setting in self.settings:
            spec = parse_attention(setting)
            variant = model if spec == model.attention_spec else with_encoder_attention(model, spec)
            self.graphdefs[setting] = nnx.split(variant)[0]
        # The encoder key of DETR.__call__(rng=key(seed)): same draws for every batch. It
        # travels as raw key data (a plain uint32 array) and is wrapped inside the jit.
        encoder_key = jax.random.split(jax.random.key(seed))[0]
        key_data = np.asarray(jax.random.key_data(encoder_key))
        if layout.mode == "sharded":
            from jax.sharding import NamedSharding, PartitionSpec
            replicated = NamedSharding(layout.mesh, PartitionSpec())
            self.states = [replicate(state, replicated)]
            self.keys = [replicate(key_data, replicated)]
            head_out = replicated
        else:
            self.states = [jax.device_put(state, d) for d in layout.devices]
            self.keys = [jax.device_put(key_data, d) for d in layout.devices]
            head_out = None
        self.encoder_key = encoder_key

        def backbone(state, pixel_values, padding_mask):
            return nnx.merge(base_graphdef, state).backbone_features(pixel_values, padding_mask)

        def make_head(graphdef):
            def head(state, features, mask, pos, key_data, original_sizes):
                rng = jax.random.wrap_key_data(key_data)
                module = nnx.merge(graphdef, state)
                memory, stats = module.encode(features, mask, pos, rng=rng)
                out = module.decode(memory, mask, pos)
                scores, labels, boxes = postprocess_arrays(out["pred_logits"], out["pred_boxes"],
                                                           original_sizes)
                result = {"scores": scores, "labels": labels.astype(jnp.int32), "boxes": boxes}
                if stats and all("num_clusters" in s for s in stats):
                    result["num_clusters"] = jnp.stack([s["num_clusters"] for s in stats], 1)
                    result["num_valid"] = jnp.stack(
                        [jnp.broadcast_to(s["num_valid"], s["num_clusters"].shape[:1])
                         for s in stats], 1)
                    if all("capacity" in s for s in stats):
                        result["capacity"] = jnp.stack([jnp.asarray(s["capacity"]) for s in stats])
                return result
            return head

        self._backbone = jax.jit(backbone)
        self._heads = {s: jax.jit(make_head(self.graphdefs[s]), out_shardings=head_out)
                       for s in self.settings}
        self._executables = _EXECUTABLES.setdefault(model, {})
        self.memory = {"backbone": None, **{s: None for s in self.settings}}
        self._measured = set()
        self.compiles = 0
        self.compile_seconds = 0.0

    def _executable(self, name, function, args, slot):
        state_sharding = getattr(jax.tree.leaves(args[0])[0], "sharding", None)
        key = (name, state_sharding, _tree_signature(args[1:]))
        fresh = key not in self._executables
        if fresh:
            start = time.perf_counter()
            compiled = function.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compiles += 1
            self._executables[key] = compiled
        compiled = self._executables[key]
        if (name, key) not in self._measured:
            self._measured.add((name, key))
            used = _memory_bytes(compiled)
            if used is not None:
                self.memory[name] = max(self.memory[name] or 0, used)
        return compiled, fresh

    def run_round(self, items):
        """Run device batches together (one per device in the per-device layout).

        items: [(slot, (pixel_values, padding_mask, original_sizes))].
        Returns (outputs {setting: [numpy dict per item]}, backbone seconds,
        {setting: head seconds}, whether anything was compiled).
        """
        compiled_any = False
        start = time.perf_counter()
        features = []
        for slot, (pixels, mask, _) in items:
            args = (self.states[slot], pixels, mask)
            exe, fresh = self._executable("backbone", self._backbone, args, slot)
            compiled_any |= fresh
            features.append(exe(*args))
        jax.block_until_ready(features)
        backbone_seconds = time.perf_counter() - start
        outputs, head_seconds = {}, {}
        for setting in self.settings:
            start = time.perf_counter()
            results = []
            for (slot, (_, _, sizes)), feats in zip(items, features):
                args = (self.states[slot], *feats, self.keys[slot], sizes)
                exe, fresh = self._executable(setting, self._heads[setting], args, slot)
                compiled_any |= fresh
                results.append(exe(*args))
            jax.block_until_ready(results)
            head_seconds[setting] = time.perf_counter() - start
            outputs[setting] = [{k: np.asarray(v) for k, v in r.items()} for r in results]
        return outputs, backbone_seconds, head_seconds, compiled_any


# --------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalResult:
    """What one evaluation pass produced (merged over hosts)."""

    settings: list
    detections: dict            # setting -> {image_id: (scores (Q,), labels (Q,), boxes (Q, 4))}
    image_ids: list             # evaluated image ids, sorted
    skipped: list               # {"index", "image_id", "path", "reason"}
    num_planned: int            # images the run covered (max_images or the dataset)
    dataset_size: int
    ms_per_image: dict          # setting -> [per-round ms per image samples]
    ratio_sums: dict            # setting -> (sum over images of per-layer ratio, count) or None
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


def _gather_across_hosts(payload):
    """Every process's ``payload`` (picklable), as a list indexed by process."""
    if jax.process_count() == 1:
        return [payload]
    from jax.experimental import multihost_utils
    blob = np.frombuffer(pickle.dumps(payload), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:blob.size] = blob
    gathered = multihost_utils.process_allgather(padded)
    return [pickle.loads(gathered[p][:int(sizes[p][0])].tobytes())
            for p in range(jax.process_count())]


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
             progress: bool = True, backend: str = "auto") -> EvalResult:
    """Predict every image of ``source`` (the first ``max_images`` when > 0) under every
    encoder-attention ``settings`` string, sharing the backbone and the data pass."""
    from tqdm import tqdm

    wall = time.perf_counter()
    settings = list(settings)
    granularity = int(granularity) if granularity else None
    layout = make_layout(granularity, devices, batch_size)
    total = len(source)
    planned = min(int(max_images), total) if max_images and max_images > 0 else total
    steps = plan_steps(layout, source, batch_size=batch_size, granularity=granularity,
                       num_images=planned, size=size, max_size=max_size)
    runner = SettingsRunner(model, settings, layout, seed=seed)
    batches = iterate_batches(source, steps, size=size, max_size=max_size,
                              granularity=granularity, skip_bad_images=skip_bad_images,
                              num_workers=num_workers, prefetch=prefetch, backend=backend)
    per_round = 1 if layout.mode == "sharded" else layout.num_devices
    local_rows = host_rows(layout, batch_size) if layout.mode == "sharded" else None
    mine = sum(1 for step in steps for i in step.indices if i >= 0)
    bar = tqdm(total=mine, unit="img", desc="eval " + "/".join(settings), dynamic_ncols=True,
               disable=not progress or layout.process_index != 0, file=sys.stderr)

    detections = {s: {} for s in settings}
    ratio_sums = {s: None for s in settings}
    flops_inputs: dict[int, dict] = {}
    samples = {s: [] for s in settings}
    skipped = []
    rounds_done = 0

    def consume(round_batches):
        nonlocal rounds_done
        items, kept = [], []
        for batch in round_batches:
            skipped.extend({"index": i, "image_id": image_id, "path": path, "reason": reason}
                           for i, image_id, path, reason in batch.skipped)
            if layout.mode != "sharded" and batch.num_real == 0:
                continue  # nothing to run (every image of the batch was skipped)
            items.append((batch.step.device, to_device(batch, layout, batch_size)))
            kept.append(batch)
        if not items:
            return
        outputs, backbone_s, head_s, compiled = runner.run_round(items)
        rows = sum(b.pixel_values.shape[0] for b in kept)
        if layout.mode == "sharded":
            rows = batch_size
        if not compiled and rounds_done >= warmup_rounds:
            for s in settings:
                samples[s].append((backbone_s + head_s[s]) * 1e3 / rows)
        rounds_done += 1
        for s in settings:
            for batch, out in zip(kept, outputs[s]):
                for r, image_id in enumerate(batch.image_ids):
                    if image_id < 0:
                        continue
                    g = local_rows[r] if layout.mode == "sharded" else r
                    detections[s][int(image_id)] = (out["scores"][g], out["labels"][g],
                                                    out["boxes"][g])
                    per_layer = None
                    if "num_clusters" in out:
                        nc = out["num_clusters"][g].astype(np.float64)       # (L, H)
                        nv = np.maximum(out["num_valid"][g], 1).astype(np.float64)  # (L,)
                        per_layer = (nc / nv[:, None]).mean(axis=1)
                        acc = ratio_sums[s]
                        ratio_sums[s] = ((acc[0] + per_layer, acc[1] + 1) if acc
                                         else (per_layer, 1))
                    index = int(batch.indices[r])
                    if index < flops_images:
                        entry = flops_inputs.setdefault(index, {
                            "index": index, "image_id": int(image_id),
                            "input_hw": tuple(int(v) for v in batch.pixel_values.shape[1:3]),
                            "valid_hw": tuple(int(v) for v in batch.image_sizes[r]),
                            "stats": {}})
                        if "num_clusters" in out:
                            layers = out["num_clusters"].shape[1]
                            entry["stats"][s] = [
                                {"num_clusters": out["num_clusters"][g, l][None],
                                 "num_valid": out["num_valid"][g, l][None],
                                 **({"capacity": out["capacity"][l]} if "capacity" in out else {})}
                                for l in range(layers)]
                        else:
                            entry["stats"][s] = None
        bar.update(sum(b.num_real for b in round_batches))
        if samples[settings[0]]:
            bar.set_postfix(ms_per_img=f"{np.median(samples[settings[0]]):.1f}", refresh=False)

    try:
        pending = []
        for batch in batches:
            pending.append(batch)
            if len(pending) == per_round:
                consume(pending)
                pending = []
        if pending:
            consume(pending)
    finally:
        bar.close()

    payload = {"detections": detections, "ratio_sums": ratio_sums, "skipped": skipped,
               "flops_inputs": flops_inputs}
    merged = _gather_across_hosts(payload)
    if len(merged) > 1:
        detections = {s: {} for s in settings}
        ratio_sums = {s: None for s in settings}
        skipped, flops_inputs = [], {}
        for part in merged:
            for s in settings:
                detections[s].update(part["detections"][s])
                acc, add = ratio_sums[s], part["ratio_sums"][s]
                if add:
                    ratio_sums[s] = (acc[0] + add[0], acc[1] + add[1]) if acc else add
            skipped.extend(part["skipped"])
            for index, entry in part["flops_inputs"].items():
                flops_inputs.setdefault(index, entry)
    image_ids = sorted(detections[settings[0]]) if settings else []
    ms = {s: samples[s] for s in settings}
    return EvalResult(
        settings=settings, detections=detections, image_ids=image_ids,
        skipped=sorted(skipped, key=lambda e: e["index"]), num_planned=planned,
        dataset_size=total, ms_per_image=ms, ratio_sums=ratio_sums,
        flops_inputs=[flops_inputs[i] for i in sorted(flops_inputs)], compiles=runner.compiles,
        compile_seconds=runner.compile_seconds, xla_memory=dict(runner.memory),
        peak_bytes=peak_device_bytes(layout.devices),
        devices=[str(d) for d in (layout.mesh.devices.flat if layout.mesh is not None
                                  else layout.devices)],
        layout=layout.mode, batch_size=batch_size, granularity=granularity,
        wall_seconds=time.perf_counter() - wall,
        encoder_layers=int(dict(model.config).get("enc_layers", 0)),
        process_count=layout.process_count)
