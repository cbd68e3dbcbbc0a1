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

Every process pads its rows to the same shape without communicating: the augmentation's
draws depend on an image's size only (:func:`~detr_jax.data.augment.augmented_size`), so
each process computes the augmented size of every image of the global batch from the
source's ``image_sizes()`` and pads to their maximum rounded up to the granularity (as if
one process had collated the whole global batch). The shape rides in the batch as
``padded_shape``; a decoded image whose size differs from the source's record stops the
run naming the image. Sources that do not know a size ((0, 0)) can only train in one
process, or with a fixed ``pad_to``.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
from PIL import Image

from detr_jax.data.augment import AugmentConfig, augmented_size, train_transform
from detr_jax.data.collate import collate, extend_padding, padded_shape
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
        self.process_count = process_count
        self._sizes = None
        self._next_step = None  # after the last batch yielded by iterate
        self._restored = None  # a state from set_state, used by the next iterate

    pipeline = "threads"

    def get_state(self) -> dict:
        """JSON-able position after the batches consumed so far (saved in checkpoints)."""
        return {"pipeline": self.pipeline, "next_step": self._next_step}

    def set_state(self, state: dict | None) -> None:
        """Continue from ``state`` (a :meth:`get_state` of a checkpoint) at the next
        :meth:`iterate`; the order is a function of the step, so this loader needs only
        the step."""
        self._restored = state

    def steps_per_epoch(self) -> int:
        return len(self.source) // self.global_batch

    def image_sizes(self) -> list[tuple[int, int]]:
        """The source's (height, width) of every image (read once)."""
        if self._sizes is None:
            self._sizes = [tuple(int(v) for v in s) for s in self.source.image_sizes()]
        return self._sizes

    def augmented_sizes(self, epoch: int, indices) -> list[tuple[int, int] | None]:
        """The training size of each image of ``indices`` in ``epoch`` (None where the
        source does not know the image's size)."""
        sizes = self.image_sizes()
        out = []
        for i in indices:
            h, w = sizes[int(i)]
            out.append(augmented_size(np.random.default_rng([self.seed, epoch, int(i)]), h, w,
                                      self.augment) if h > 0 and w > 0 else None)
        return out

    def plan(self, step: int):
        """(epoch, this process's indices, their expected augmented sizes, the padded
        shape of the whole global batch) for ``step``; every process computes the same
        shape from the image sizes alone. The shape is ``pad_to`` when set; None (pad
        to this batch's own images) when a size is unknown in a one-process run."""
        epoch, indices = global_batch_indices(step, len(self.source), self.global_batch, self.seed)
        local = indices[self.offset:self.offset + self.local_batch]
        if self.pad_to:
            return epoch, local, None, self.pad_to
        sizes = self.augmented_sizes(epoch, indices)
        if any(s is None for s in sizes):
            if self.process_count > 1:
                unknown = [int(i) for i, s in zip(indices, sizes) if s is None]
                raise ValueError(
                    f"the sizes of images {unknown[:5]} (source indices) are unknown: with "
                    f"{self.process_count} processes every process must know every image's "
                    "size to pad the global batch to one shape without communicating; give "
                    "the annotation file image heights and widths, or set train.pad_to")
            return epoch, local, None, None
        shape = padded_shape([s[0] for s in sizes], [s[1] for s in sizes], self.granularity)
        return epoch, local, sizes[self.offset:self.offset + self.local_batch], shape

    def _collate(self, step: int, epoch: int, examples: list[dict], expected=None,
                 shape=None) -> dict:
        for e, size in zip(examples, expected or ()):
            if tuple(e["image"].shape[:2]) != tuple(size):
                raise ValueError(
                    f"image id {e['image_id']}: its augmented size {e['image'].shape[:2]} "
                    f"differs from the {tuple(size)} predicted from the source's recorded "
                    "size (the annotation file's height/width do not match the decoded "
                    "image); fix the record, or set train.pad_to")
        out = collate(examples, granularity=self.granularity, max_targets=self.max_targets,
                      pad_to=self.pad_to)
        if shape is not None:
            out = extend_padding(out, shape)
        out["padded_shape"] = tuple(out["pixel_values"].shape[1:3])
        out["step"], out["epoch"] = step, epoch
        return out

    def batch(self, step: int) -> dict:
        """The batch of ``step``, computed in this thread."""
        epoch, local, expected, shape = self.plan(step)
        return self._collate(step, epoch, [
            augmented_example(self.source, self.seed, self.augment, epoch, i) for i in local],
            expected, shape)

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
        self._restored = None
        buffer: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()
        pool, submit = self._executor()

        def produce():
            pending = collections.deque()
            try:
                for step in range(start_step, num_steps):
                    if stop.is_set():
                        return
                    epoch, local, expected, shape = self.plan(step)
                    pending.append((step, epoch, [submit(epoch, i) for i in local], expected,
                                    shape))
                    if len(pending) > self.prefetch:
                        step_, epoch_, futures, expected_, shape_ = pending.popleft()
                        buffer.put(self._collate(step_, epoch_, [f.result() for f in futures],
                                                 expected_, shape_))
                while pending and not stop.is_set():
                    step_, epoch_, futures, expected_, shape_ = pending.popleft()
                    buffer.put(self._collate(step_, epoch_, [f.result() for f in futures],
                                             expected_, shape_))
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
                self._next_step = item["step"] + 1
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full buffer
                try:
                    buffer.get(timeout=0.05)
                except queue.Empty:
                    pass
            pool.shutdown(wait=False, cancel_futures=True)
