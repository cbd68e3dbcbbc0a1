"""Training input: deterministic sampling, augmentation on host threads, padded batches.

The order is a function of (seed, epoch) only, so a run resumed at step s sees the same
batches as an uninterrupted one. Each process reads only its slice of every global batch
(``jax.process_index()``); per-example augmentation randomness is
``default_rng([seed, epoch, index])``.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from PIL import Image

from detr_jax.data.augment import AugmentConfig, train_transform
from detr_jax.data.transforms import normalize, pad_batch, padded_shape


class DetectionSource(Protocol):
    """Random access to examples: ``example(i)`` -> dict with ``image`` (PIL RGB),
    ``image_id`` (int), ``boxes`` ((N, 4) float32 absolute xyxy) and ``labels`` ((N,) int32)."""

    def __len__(self) -> int: ...

    def example(self, index: int) -> dict: ...


class CocoTrainSource:
    """Non-crowd boxes of a COCO-format annotation file, clipped to the image as the
    official ``ConvertCocoPolysToMask``; images without boxes are kept (all no-object)."""

    def __init__(self, annotations: str, image_root: str):
        import json
        for path in (annotations, image_root):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} does not exist")
        with open(annotations) as f:
            data = json.load(f)
        self.image_root = image_root
        self.images = sorted(data["images"], key=lambda im: im["id"])
        by_image: dict[int, list] = {}
        for ann in data.get("annotations", []):
            if not ann.get("iscrowd", 0):
                by_image.setdefault(ann["image_id"], []).append(ann)
        self.annotations = by_image
        self.category_ids = sorted(c["id"] for c in data.get("categories", []))

    def __len__(self):
        return len(self.images)

    def example(self, index: int) -> dict:
        info = self.images[index]
        path = os.path.join(self.image_root, info["file_name"])
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as err:
            raise ValueError(f"image {path} (id {info['id']}) cannot be decoded: {err}") from None
        anns = self.annotations.get(info["id"], [])
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, image.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, image.height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = np.array([a["category_id"] for a in anns], np.int32)[keep]
        return {"image": image, "image_id": int(info["id"]), "boxes": boxes[keep], "labels": labels}


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def global_batch_indices(step: int, num_examples: int, global_batch: int, seed: int):
    """(epoch, dataset indices of the global batch at ``step``); the last partial batch of
    every epoch is dropped."""
    per_epoch = num_examples // global_batch
    if per_epoch == 0:
        raise ValueError(f"dataset of {num_examples} images is smaller than the global batch {global_batch}")
    epoch, position = divmod(step, per_epoch)
    order = epoch_order(num_examples, seed, epoch)
    return epoch, order[position * global_batch:(position + 1) * global_batch]


def collate(examples: list[dict], *, granularity: int, max_targets: int) -> dict:
    """Pad images to the batch maximum rounded up to ``granularity`` and targets to
    ``max_targets``; boxes become cx-cy-w-h relative to each image's unpadded size."""
    arrays = [normalize(e["image"]) for e in examples]
    shape = padded_shape([a.shape[0] for a in arrays], [a.shape[1] for a in arrays], granularity)
    pixels, mask = pad_batch(arrays, shape)
    labels = np.zeros((len(examples), max_targets), np.int32)
    boxes = np.zeros((len(examples), max_targets, 4), np.float32)
    valid = np.zeros((len(examples), max_targets), bool)
    for i, (e, a) in enumerate(zip(examples, arrays)):
        n = min(len(e["labels"]), max_targets)
        h, w = a.shape[:2]
        b = e["boxes"][:n]
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                           (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], -1)
        labels[i, :n], boxes[i, :n], valid[i, :n] = e["labels"][:n], cxcywh, True
    return {"pixel_values": pixels, "padding_mask": mask, "labels": labels, "boxes": boxes,
            "valid": valid, "image_ids": np.array([e["image_id"] for e in examples], np.int64)}


class TrainLoader:
    """Iterates host-local batches from ``start_step`` on, prefetching on worker threads.

    ``local_batch`` images per process: process p takes positions
    [p * local_batch, (p + 1) * local_batch) of each global batch.
    """

    def __init__(self, source: DetectionSource, *, global_batch: int, seed: int,
                 augment: AugmentConfig, granularity: int, max_targets: int,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 4,
                 prefetch: int = 2):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.source, self.global_batch, self.seed = source, global_batch, seed
        self.augment, self.granularity, self.max_targets = augment, granularity, max_targets
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.pool = ThreadPoolExecutor(max(1, num_workers))
        self.prefetch = prefetch

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def _example(self, epoch: int, index: int) -> dict:
        e = self.source.example(int(index))
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        image, boxes, labels = train_transform(rng, e["image"], e["boxes"], e["labels"], self.augment)
        return {"image": image, "image_id": e["image_id"], "boxes": boxes, "labels": labels}

    def batch(self, step: int) -> dict:
        epoch, indices = global_batch_indices(step, len(self.source), self.global_batch, self.seed)
        local = indices[self.offset:self.offset + self.local_batch]
        examples = list(self.pool.map(lambda i: self._example(epoch, i), local))
        out = collate(examples, granularity=self.granularity, max_targets=self.max_targets)
        out["step"], out["epoch"] = step, epoch
        return out

    def iterate(self, start_step: int, num_steps: int):
        """Yield batches for steps [start_step, num_steps) with a bounded prefetch queue."""
        buffer: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for step in range(start_step, num_steps):
                    if stop.is_set():
                        return
                    buffer.put(self.batch(step))
                buffer.put(None)
            except BaseException as err:  # surfaced in the consumer
                buffer.put(err)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while True:
                item = buffer.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
