"""Evaluation input pipeline: a deterministic plan of batches, decoded and resized on host
threads with bounded prefetch, each host reading only its share, placed on the devices.

Batches carry uint8 pixels padded by :func:`~detr_jax.data.collate.pad_images`;
:func:`to_device` normalizes them on the device (:func:`~detr_jax.data.normalize.normalize`).

Two layouts (``make_layout``):

* **sharded** (shape buckets, ``granularity > 0``): one global batch of ``batch_size``
  images per step, split along the batch axis over a ``Mesh`` of all devices
  (``NamedSharding(mesh, P("data"))``). Every host computes the same plan from the image
  sizes (annotation metadata), so all hosts agree on each step's padded shape (the
  batch's largest resized size rounded up to the granularity) without talking; each host
  decodes only the rows its own devices hold. The last batch is filled with dummy rows
  (all padding) whose outputs are dropped. Predictions do not depend on the number of
  devices or hosts: a batch's composition and shape depend only on ``batch_size``.
* **per-device** (exact shapes, ``granularity`` 0 / None, the DC5 protocol): host ``p`` of
  ``P`` takes images ``p, p + P, ...``; consecutive ones form batches padded to their own
  maximum (the official collate); batches go round-robin to the host's devices, each
  device running its own shapes.

Workers: ``grain`` (thread-based ``MapDataset`` read, ordered) when it is installed, else a
thread pool with the same bounded, ordered prefetch. Decoding errors are
:class:`~detr_jax.data.coco.BadImageError`; with ``skip_bad_images`` the row becomes a
dummy and the error is recorded in the batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import math
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np

from detr_jax.data.coco import BadImageError
from detr_jax.data.collate import pad_images, padded_shape
from detr_jax.data.normalize import normalize
from detr_jax.data.transforms import resized_size


@dataclasses.dataclass(frozen=True)
class Step:
    """One batch of the plan, as seen by this host.

    number: step number (global in the sharded layout, this host's in the per-device one).
    indices: dataset indices of this host's rows (-1: dummy row).
    shape: padded (H, W) agreed for the whole step (sharded), or None (batch maximum).
    device: slot of the local device that runs it (per-device layout; 0 when sharded).
    """

    number: int
    indices: tuple[int, ...]
    shape: tuple[int, int] | None
    device: int = 0


@dataclasses.dataclass
class HostBatch:
    """A decoded batch of one host. Dummy and skipped rows have ``image_ids`` -1 and are all
    padding. ``skipped``: (index, image_id, path, reason) of images that failed to decode."""

    step: Step
    pixel_values: np.ndarray      # (R, H, W, 3) uint8, 0 on padding
    padding_mask: np.ndarray      # (R, H, W) bool, True on padding
    original_sizes: np.ndarray    # (R, 2) int32
    image_sizes: np.ndarray       # (R, 2) int32, after resizing
    image_ids: np.ndarray         # (R,) int64, -1 for dummy rows
    indices: np.ndarray           # (R,) int64 dataset index, -1 for dummy rows
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def num_real(self) -> int:
        return int((self.image_ids >= 0).sum())


@dataclasses.dataclass
class Layout:
    """Where batches run. ``mode`` is "sharded" or "per_device"."""

    mode: str
    devices: tuple            # devices of this host that run batches
    mesh: object = None
    sharding: object = None
    process_index: int = 0
    process_count: int = 1

    @property
    def num_devices(self) -> int:
        return len(self.devices)


def make_layout(granularity: int | None, devices: Sequence | None = None,
                batch_size: int | None = None) -> Layout:
    """The layout for a granularity: sharded over a Mesh of ``devices`` (default: all
    devices of all hosts) when bucketing, else per-device over this host's devices.

    When sharding, ``batch_size`` must split evenly over the devices; on one host a batch
    size that does not is run on the largest number of devices that divides it (with a
    warning), on several hosts it is an error.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    all_devices = list(devices) if devices is not None else list(jax.devices())
    all_devices.sort(key=lambda d: (d.process_index, d.id))
    process_index, process_count = jax.process_index(), jax.process_count()
    local = tuple(d for d in all_devices if d.process_index == process_index)
    if not local:
        raise ValueError("none of the given devices belongs to this process")
    if granularity:
        if batch_size and batch_size % len(all_devices):
            if process_count > 1:
                raise ValueError(
                    f"eval.batch_size={batch_size} must be a multiple of the "
                    f"{len(all_devices)} devices of all hosts (e.g. "
                    f"{math.ceil(batch_size / len(all_devices)) * len(all_devices)})")
            used = math.gcd(batch_size, len(all_devices))
            warnings.warn(f"eval.batch_size={batch_size} does not split over "
                          f"{len(all_devices)} devices: using {used}; set a multiple of "
                          f"{len(all_devices)} to use them all", stacklevel=2)
            all_devices = all_devices[:used]
            local = tuple(all_devices)
        mesh = Mesh(np.array(all_devices), ("data",))
        return Layout("sharded", local, mesh, NamedSharding(mesh, PartitionSpec("data")),
                      process_index, process_count)
    return Layout("per_device", local, None, None, process_index, process_count)


def host_rows(layout: Layout, batch_size: int) -> list[int]:
    """Row positions of a global batch that this host's devices hold (sharded layout)."""
    total = len(layout.mesh.devices.flat)
    if batch_size % total:
        raise ValueError(f"eval.batch_size={batch_size} must be a multiple of the {total} "
                         f"devices when sharding buckets over them (e.g. "
                         f"{math.ceil(batch_size / total) * total})")
    rows = set()
    for index in layout.sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(*index[0].indices(batch_size)))
    return sorted(rows)


def plan_sharded(sizes: Sequence[tuple[int, int]], *, batch_size: int, granularity: int,
                 rows: Sequence[int], size: int = 800, max_size: int | None = 1333
                 ) -> list[Step]:
    """Global steps of ``batch_size`` consecutive images; this host's ``rows`` of each.

    sizes: (height, width) of every image, known to every host; (0, 0) for unknown
    sizes (the image is then expected to fail decoding; its row does not widen the step).
    """
    steps = []
    for number, start in enumerate(range(0, len(sizes), batch_size)):
        members = list(range(start, min(start + batch_size, len(sizes))))
        resized = [resized_size(*sizes[i], size, max_size) for i in members if min(sizes[i]) > 0]
        if resized:
            shape = padded_shape([r[0] for r in resized], [r[1] for r in resized], granularity)
        else:
            shape = (granularity, granularity)
        padded = members + [-1] * (batch_size - len(members))
        steps.append(Step(number, tuple(padded[r] for r in rows), shape, 0))
    return steps


def plan_per_device(num_images: int, *, batch_size: int, process_index: int = 0,
                    process_count: int = 1, num_devices: int = 1) -> list[Step]:
    """This host's images ``p, p + P, ...`` in batches, round-robin over its devices."""
    mine = list(range(process_index, num_images, process_count))
    return [Step(number, tuple(mine[start:start + batch_size]), None, number % num_devices)
            for number, start in enumerate(range(0, len(mine), batch_size))]


def plan_steps(layout: Layout, source, *, batch_size: int, granularity: int | None,
               num_images: int, size: int = 800, max_size: int | None = 1333) -> list[Step]:
    """The plan of this host for the first ``num_images`` images of ``source``."""
    if batch_size < 1:
        raise ValueError(f"eval.batch_size must be positive, got {batch_size}")
    if layout.mode == "sharded":
        sizes = source.image_sizes()[:num_images]
        return plan_sharded(sizes, batch_size=batch_size, granularity=granularity,
                            rows=host_rows(layout, batch_size), size=size, max_size=max_size)
    return plan_per_device(num_images, batch_size=batch_size,
                           process_index=layout.process_index,
                           process_count=layout.process_count, num_devices=layout.num_devices)


def load_step(source, step: Step, *, size: int = 800, max_size: int | None = 1333,
              granularity: int | None = None, skip_bad_images: bool = False) -> HostBatch:
    """Decode and resize (official rule) the images of one step; pad them (uint8)."""
    arrays, originals, ids, indices, skipped = [], [], [], [], []
    for index in step.indices:
        array = None
        if index >= 0:
            record = source.records[index]
            try:
                array, original = source.load_image(index, size, max_size)
            except BadImageError as err:
                if not skip_bad_images:
                    raise
                skipped.append((int(index), err.image_id, err.path, err.reason))
            else:
                originals.append(original)
                ids.append(record.image_id)
                indices.append(index)
        arrays.append(array)
        if array is None:
            originals.append((1, 1))
            ids.append(-1)
            indices.append(-1)
    shape = step.shape
    if shape is not None:
        for a, index in zip(arrays, step.indices):
            if a is not None and (a.shape[0] > shape[0] or a.shape[1] > shape[1]):
                record = source.records[index]
                raise ValueError(
                    f"image {record.path} (id {record.image_id}) is {a.shape[0]}x{a.shape[1]} "
                    f"after resizing, larger than the step's planned {shape[0]}x{shape[1]}: its "
                    f"annotated size {record.height}x{record.width} is wrong")
    pixels, mask = pad_images(arrays, shape, granularity)
    resized = [a.shape[:2] if a is not None else (0, 0) for a in arrays]
    rows = len(arrays)
    return HostBatch(step, pixels, mask, np.asarray(originals, np.int32).reshape(rows, 2),
                     np.asarray(resized, np.int32).reshape(rows, 2),
                     np.asarray(ids, np.int64), np.asarray(indices, np.int64), skipped)


def _threaded_map(fn: Callable, items: Sequence, workers: int, prefetch: int) -> Iterator:
    """Ordered map over ``items`` on a thread pool, at most ``prefetch`` results ahead."""
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="detr-data") as pool:
        pending = collections.deque()
        iterator = iter(items)
        try:
            for item in iterator:
                pending.append(pool.submit(fn, item))
                if len(pending) >= max(prefetch, 1):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def grain_available() -> bool:
    try:
        import grain  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


def iterate_batches(source, steps: Sequence[Step], *, size: int = 800,
                    max_size: int | None = 1333, granularity: int | None = None,
                    skip_bad_images: bool = False, num_workers: int = 4, prefetch: int = 4,
                    backend: str = "auto") -> Iterator[HostBatch]:
    """Decoded batches of ``steps`` in order, prepared ``prefetch`` steps ahead on
    ``num_workers`` threads. backend: "grain", "threads" or "auto" (grain when installed)."""

    def load(step):
        return load_step(source, step, size=size, max_size=max_size, granularity=granularity,
                         skip_bad_images=skip_bad_images)

    if backend == "auto":
        backend = "grain" if grain_available() and num_workers > 0 else "threads"
    if backend == "grain" and steps:
        import grain
        dataset = grain.MapDataset.source(list(steps)).map(load)
        options = grain.ReadOptions(num_threads=max(num_workers, 1),
                                    prefetch_buffer_size=max(prefetch, 1))
        yield from dataset.to_iter_dataset(options)
        return
    yield from _threaded_map(load, steps, num_workers, prefetch)


@functools.cache
def _device_normalize():
    import jax
    return jax.jit(normalize)


def to_device(batch: HostBatch, layout: Layout, global_batch: int | None = None):
    """(pixel_values, padding_mask, original_sizes) as device arrays: sharded along the
    batch axis over the mesh (each host giving its rows), or on the step's device. The
    uint8 pixels travel as they are and are normalized there: pixel_values (B, H, W, 3)
    float32, 0 on padding."""
    import jax
    arrays = (batch.pixel_values, batch.padding_mask, batch.original_sizes)
    if layout.mode == "sharded":
        out = []
        for a in arrays:
            shape = (global_batch, *a.shape[1:]) if global_batch else None
            out.append(jax.make_array_from_process_local_data(layout.sharding, a, shape))
    else:
        device = layout.devices[batch.step.device]
        out = [jax.device_put(a, device) for a in arrays]
    return (_device_normalize()(out[0], out[1]), out[1], out[2])
