"""Training input: deterministic sampling, augmentation in worker processes, padded batches.

The order is a function of (seed, epoch) only, so a run resumed at step s sees the same
batches as an uninterrupted one. Each process reads only its slice of every global batch
(``jax.process_index()``); per-example augmentation randomness is
``default_rng([seed, epoch, index])``, so worker count and kind never change a batch.

Batches carry uint8 pixels (4x less to move between processes and to the device); the
training step normalizes them on the device (``normalize_on_device``).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Protocol

import numpy as np
from PIL import Image

from detr_jax.data.augment import AugmentConfig, train_transform
from detr_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, padded_shape


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


def collate(examples: list[dict], *, granularity: int, max_targets: int,
            pad_to: tuple[int, int] | None = None) -> dict:
    """Pad uint8 images to the batch maximum rounded up to ``granularity`` (or to the fixed
    ``pad_to`` (H, W)) and targets to ``max_targets``; boxes become cx-cy-w-h relative to
    each image's unpadded size. Padded pixels are 0 and marked in ``padding_mask``."""
    arrays = [np.asarray(e["image"], np.uint8) for e in examples]
    heights, widths = [a.shape[0] for a in arrays], [a.shape[1] for a in arrays]
    shape = padded_shape(heights, widths, granularity)
    if pad_to:
        if max(heights) > pad_to[0] or max(widths) > pad_to[1]:
            raise ValueError(f"an augmented image of {max(heights)}x{max(widths)} exceeds "
                             f"train.pad_to={tuple(pad_to)}; raise it or lower data.max_size")
        shape = tuple(pad_to)
    pixels = np.zeros((len(arrays), *shape, 3), np.uint8)
    mask = np.ones((len(arrays), *shape), bool)
    labels = np.zeros((len(examples), max_targets), np.int32)
    boxes = np.zeros((len(examples), max_targets, 4), np.float32)
    valid = np.zeros((len(examples), max_targets), bool)
    for i, (e, a) in enumerate(zip(examples, arrays)):
        h, w = a.shape[:2]
        pixels[i, :h, :w], mask[i, :h, :w] = a, False
        n = min(len(e["labels"]), max_targets)
        b = e["boxes"][:n]
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                           (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], -1)
        labels[i, :n], boxes[i, :n], valid[i, :n] = e["labels"][:n], cxcywh, True
    return {"pixel_values": pixels, "padding_mask": mask, "labels": labels, "boxes": boxes,
            "valid": valid, "image_ids": np.array([e["image_id"] for e in examples], np.int64)}


def normalize_on_device(pixel_values, padding_mask):
    """uint8 (B, H, W, 3) -> float32 ``(x / 255 - mean) / std`` with padding set to 0, as
    the evaluation's host-side ``normalize`` + zero padding (float inputs pass through)."""
    import jax.numpy as jnp
    if pixel_values.dtype != jnp.uint8:
        return pixel_values
    x = pixel_values.astype(jnp.float32) / jnp.float32(255)
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return jnp.where(padding_mask[..., None], 0.0, x)


_WORKER: dict = {}


def _init_worker(source, seed: int, augment: AugmentConfig) -> None:
    _WORKER.update(source=source, seed=seed, augment=augment)


def augmented_example(source, seed: int, augment: AugmentConfig, epoch: int, index: int) -> dict:
    """One training example: decoded, augmented with ``default_rng([seed, epoch, index])``."""
    e = source.example(int(index))
    rng = np.random.default_rng([seed, epoch, int(index)])
    image, boxes, labels = train_transform(rng, e["image"], e["boxes"], e["labels"], augment)
    return {"image": np.asarray(image, np.uint8), "image_id": e["image_id"], "boxes": boxes,
            "labels": labels}


def _worker_example(epoch: int, index: int) -> dict:
    return augmented_example(_WORKER["source"], _WORKER["seed"], _WORKER["augment"], epoch, index)


class TrainLoader:
    """Iterates host-local batches from ``start_step`` on, prepared ahead by workers.

    ``local_batch`` images per process: process p takes positions
    [p * local_batch, (p + 1) * local_batch) of each global batch. ``workers="process"``
    decodes and augments in ``num_workers`` spawned processes (the GIL limits threads to
    a few hundred images/s); ``"thread"`` uses threads (tests, tiny data). Up to
    ``prefetch`` batches are in flight.
    """

    def __init__(self, source: DetectionSource, *, global_batch: int, seed: int,
                 augment: AugmentConfig, granularity: int, max_targets: int,
                 process_index: int = 0, process_count: int = 1, num_workers: int = 4,
                 prefetch: int = 2, workers: str = "thread",
                 pad_to: tuple[int, int] | None = None):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        if workers not in ("process", "thread"):
            raise ValueError(f"workers={workers!r}: choose 'process' or 'thread'")
        self.source, self.global_batch, self.seed = source, global_batch, seed
        self.augment, self.granularity, self.max_targets = augment, granularity, max_targets
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch
        self.num_workers, self.workers = max(1, num_workers), workers
        self.prefetch = max(1, prefetch)
        self.pad_to = tuple(pad_to) if pad_to else None

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def _indices(self, step: int):
        epoch, indices = global_batch_indices(step, len(self.source), self.global_batch, self.seed)
        return epoch, indices[self.offset:self.offset + self.local_batch]

    def _collate(self, step: int, epoch: int, examples: list[dict]) -> dict:
        out = collate(examples, granularity=self.granularity, max_targets=self.max_targets,
                      pad_to=self.pad_to)
        out["step"], out["epoch"] = step, epoch
        return out

    def batch(self, step: int) -> dict:
        """The batch of ``step``, computed in this thread."""
        epoch, local = self._indices(step)
        return self._collate(step, epoch, [
            augmented_example(self.source, self.seed, self.augment, epoch, i) for i in local])

    def _executor(self):
        if self.workers == "thread":
            pool = ThreadPoolExecutor(self.num_workers)
            return pool, lambda epoch, i: pool.submit(
                augmented_example, self.source, self.seed, self.augment, epoch, i)
        pool = ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker,
                                   initargs=(self.source, self.seed, self.augment))
        return pool, lambda epoch, i: pool.submit(_worker_example, epoch, int(i))

    def iterate(self, start_step: int, num_steps: int):
        """Yield batches for steps [start_step, num_steps) with a bounded prefetch queue."""
        buffer: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()
        pool, submit = self._executor()

        def produce():
            pending = collections.deque()
            try:
                for step in range(start_step, num_steps):
                    if stop.is_set():
                        return
                    epoch, local = self._indices(step)
                    pending.append((step, epoch, [submit(epoch, i) for i in local]))
                    if len(pending) > self.prefetch:
                        step_, epoch_, futures = pending.popleft()
                        buffer.put(self._collate(step_, epoch_, [f.result() for f in futures]))
                while pending and not stop.is_set():
                    step_, epoch_, futures = pending.popleft()
                    buffer.put(self._collate(step_, epoch_, [f.result() for f in futures]))
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
            while thread.is_alive():  # unblock a producer waiting on a full buffer
                try:
                    buffer.get(timeout=0.05)
                except queue.Empty:
                    pass
            pool.shutdown(wait=False, cancel_futures=True)
