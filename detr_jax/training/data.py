"""Training input: deterministic sampling, augmentation in worker processes, padded batches.

The order is a function of (seed, epoch) only, so a run resumed at step s sees the same
batches as an uninterrupted one. Each process reads only its slice of every global batch
(``jax.process_index()``); per-example augmentation randomness is
``default_rng([seed, epoch, index])``, so worker count and kind never change a batch.

Examples come from any :class:`~detr_jax.data.source.DetectionSource` (its training
targets: :func:`~detr_jax.data.source.training_targets`). Batches carry uint8 pixels
(:func:`~detr_jax.data.collate.collate`; 4x less to move between processes and to the
device); the training step normalizes them on the device
(:func:`~detr_jax.data.normalize.normalize`).
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from PIL import Image

from detr_jax.data.augment import AugmentConfig, train_transform
from detr_jax.data.collate import collate
from detr_jax.data.source import DetectionSource, training_targets


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of dataset indices that epoch ``epoch`` visits."""
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


_WORKER: dict = {}


def _init_worker(source, seed: int, augment: AugmentConfig) -> None:
    _WORKER.update(source=source, seed=seed, augment=augment)


def augmented_example(source, seed: int, augment: AugmentConfig, epoch: int, index: int) -> dict:
    """One training example: decoded, its training targets augmented with
    ``default_rng([seed, epoch, index])``. -> {"image": (h, w, 3) uint8, "image_id",
    "boxes": (N, 4) absolute xyxy, "labels": (N,) int32}."""
    e = source[int(index)]
    boxes, labels = training_targets(e)
    rng = np.random.default_rng([seed, epoch, int(index)])
    image, boxes, labels = train_transform(rng, Image.fromarray(e.image, "RGB"), boxes, labels,
                                           augment)
    return {"image": np.asarray(image, np.uint8), "image_id": e.image_id, "boxes": boxes,
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
