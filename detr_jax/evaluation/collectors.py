"""Collectors of an evaluation: each takes the loop's rounds (``update``), and the parts of
every host are merged at the end (``payload`` / ``merge``, through :func:`gather_across_hosts`).

- :class:`Detections`: per setting and image, the post-processed predictions (COCOeval).
- :class:`Skipped`: images that failed to decode.
- :class:`Timing`: ms per image of each round after warm-up, compiles excluded (local).
- :class:`ClusterStats`: per setting, the sum over images of the prototype ratio per
  encoder layer, and the first images' statistics for the FLOPs counter.
"""

from __future__ import annotations

import pickle

import jax
import numpy as np

from detr_jax.evaluation.layer_stats import image_layer_stats


def gather_across_hosts(payload) -> list:
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


class Detections:
    """``detections[setting][image_id] = (scores (Q,), labels (Q,), boxes (Q, 4))``."""

    def __init__(self, settings):
        self.settings = list(settings)
        self.detections = {s: {} for s in self.settings}

    def update(self, round_) -> None:
        for s in self.settings:
            for image in round_.images(s):
                out = image.output
                self.detections[s][image.image_id] = (out["scores"], out["labels"], out["boxes"])

    def payload(self):
        return self.detections

    def merge(self, parts) -> None:
        self.detections = {s: {} for s in self.settings}
        for part in parts:
            for s in self.settings:
                self.detections[s].update(part[s])


class Skipped:
    """Images that failed to decode, sorted by dataset index after ``merge``."""

    def __init__(self):
        self.entries = []

    def update(self, round_) -> None:
        self.entries.extend(round_.skipped())

    def payload(self):
        return self.entries

    def merge(self, parts) -> None:
        self.entries = sorted((e for part in parts for e in part), key=lambda e: e["index"])


class Timing:
    """Per setting, ms per image of every round that ran after ``warmup_rounds`` rounds
    and compiled nothing (local to this host)."""

    def __init__(self, settings, warmup_rounds: int = 1):
        self.samples = {s: [] for s in settings}
        self.warmup_rounds = warmup_rounds
        self.rounds = 0

    def update(self, round_) -> None:
        if not round_.ran:
            return
        if not round_.compiled and self.rounds >= self.warmup_rounds:
            for s, seconds in round_.seconds.items():
                self.samples[s].append(seconds * 1e3 / round_.rows)
        self.rounds += 1

    def median(self, setting) -> float | None:
        samples = self.samples.get(setting)
        return float(np.median(samples)) if samples else None


class ClusterStats:
    """Prototype ratios and FLOPs inputs of clustered settings.

    ``ratio_sums[setting]``: (sum over images of the per-layer ratio clusters / valid
    tokens averaged over heads (L,), image count), or None without clusters.
    ``flops_inputs[index]`` for dataset indices below ``flops_images``: {"index",
    "image_id", "input_hw", "valid_hw", "stats": {setting: per-layer stats or None}}.
    """

    def __init__(self, settings, flops_images: int = 100):
        self.settings = list(settings)
        self.flops_images = flops_images
        self.ratio_sums = {s: None for s in self.settings}
        self.flops_inputs: dict[int, dict] = {}

    @staticmethod
    def image_ratio(output) -> np.ndarray:
        """(L,) mean over heads of num_clusters / max(num_valid, 1) of one image."""
        nc = output["num_clusters"].astype(np.float64)                     # (L, H)
        nv = np.maximum(output["num_valid"], 1).astype(np.float64)         # (L,)
        return (nc / nv[:, None]).mean(axis=1)

    def _add_ratio(self, setting, ratio, count=1) -> None:
        acc = self.ratio_sums[setting]
        self.ratio_sums[setting] = (acc[0] + ratio, acc[1] + count) if acc else (ratio, count)

    def update(self, round_) -> None:
        for s in self.settings:
            for image in round_.images(s):
                out = image.output
                clustered = "num_clusters" in out
                if clustered:
                    self._add_ratio(s, self.image_ratio(out))
                if image.index >= self.flops_images:
                    continue
                entry = self.flops_inputs.setdefault(image.index, {
                    "index": image.index, "image_id": image.image_id,
                    "input_hw": image.input_hw, "valid_hw": image.valid_hw, "stats": {}})
                entry["stats"][s] = None
                if clustered:
                    capacity = out.get("capacity")
                    entry["stats"][s] = [
                        image_layer_stats(out["num_clusters"][l], out["num_valid"][l],
                                          None if capacity is None else capacity[l])
                        for l in range(out["num_clusters"].shape[0])]

    def payload(self):
        return {"ratio_sums": self.ratio_sums, "flops_inputs": self.flops_inputs}

    def merge(self, parts) -> None:
        self.ratio_sums = {s: None for s in self.settings}
        self.flops_inputs = {}
        for part in parts:
            for s in self.settings:
                if part["ratio_sums"][s]:
                    self._add_ratio(s, *part["ratio_sums"][s])
            for index, entry in part["flops_inputs"].items():
                self.flops_inputs.setdefault(index, entry)

    def ordered_flops_inputs(self) -> list[dict]:
        return [self.flops_inputs[i] for i in sorted(self.flops_inputs)]
