"""Padding and collation of uint8 images: one rule for training, evaluation and the trainer.

Images are zero-padded at the bottom/right to a common (H, W); ``padding_mask`` is True
on padding. Pixels stay uint8 (4x less to move than float32); the step normalizes them
on the device (:func:`detr_jax.data.normalize.normalize`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def padded_shape(heights: Sequence[int], widths: Sequence[int], granularity: int | None):
    """Batch spatial shape: the maximum, rounded up to ``granularity`` when given."""
    h, w = max(heights), max(widths)
    if granularity:
        h = int(math.ceil(h / granularity) * granularity)
        w = int(math.ceil(w / granularity) * granularity)
    return h, w


def pad_images(images: Sequence[np.ndarray | None], shape: tuple[int, int] | None = None,
               granularity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad (h, w, C) images into one batch.

    images: arrays of one dtype (uint8 for model inputs); None is a row of padding only.
    shape: the padded (H, W); by default the largest image, rounded up to ``granularity``
      when given. Raises ValueError naming the row when an image does not fit.
    Returns (pixels (B, H, W, C) of the images' dtype, padding_mask (B, H, W) bool).
    """
    real = [a for a in images if a is not None]
    if shape is None:
        shape = (padded_shape([a.shape[0] for a in real], [a.shape[1] for a in real], granularity)
                 if real else (1, 1))
    channels = real[0].shape[-1] if real else 3
    dtype = real[0].dtype if real else np.uint8
    pixels = np.zeros((len(images), *shape, channels), dtype)
    mask = np.ones((len(images), *shape), bool)
    for i, a in enumerate(images):
        if a is None:
            continue
        if a.shape[0] > shape[0] or a.shape[1] > shape[1]:
            raise ValueError(f"image {i} of shape {a.shape[:2]} does not fit the padded shape "
                             f"{tuple(shape)}")
        pixels[i, :a.shape[0], :a.shape[1]] = a
        mask[i, :a.shape[0], :a.shape[1]] = False
    return pixels, mask


def extend_padding(batch: dict, shape: tuple[int, int]) -> dict:
    """A collated batch with its bottom/right padding extended to ``shape`` (H, W):
    ``pixel_values`` (B, h, w, C) gets zeros and ``padding_mask`` (B, h, w) True; other
    entries are kept."""
    h, w = batch["pixel_values"].shape[1:3]
    if (h, w) == tuple(shape):
        return batch
    extra = ((0, 0), (0, shape[0] - h), (0, shape[1] - w))
    return dict(batch, pixel_values=np.pad(batch["pixel_values"], extra + ((0, 0),)),
                padding_mask=np.pad(batch["padding_mask"], extra, constant_values=True))


def collate(examples: list[dict], *, granularity: int | None, max_targets: int,
            pad_to: tuple[int, int] | None = None) -> dict:
    """A training batch from examples {"image": (h, w, 3) uint8, "image_id", "boxes":
    (N, 4) absolute xyxy, "labels": (N,)}.

    Images are padded to the batch maximum rounded up to ``granularity`` (or to the fixed
    ``pad_to`` (H, W)), targets to ``max_targets``; boxes become cx-cy-w-h relative to
    each image's unpadded size. Returns pixel_values (B, H, W, 3) uint8, padding_mask
    (B, H, W), labels (B, T) int32, boxes (B, T, 4) float32, valid (B, T) bool,
    image_ids (B,) int64.
    """
    arrays = [np.asarray(e["image"], np.uint8) for e in examples]
    shape = None
    if pad_to:
        heights, widths = [a.shape[0] for a in arrays], [a.shape[1] for a in arrays]
        if max(heights) > pad_to[0] or max(widths) > pad_to[1]:
            raise ValueError(f"an augmented image of {max(heights)}x{max(widths)} exceeds "
                             f"train.pad_to={tuple(pad_to)}; raise it or lower data.max_size")
        shape = tuple(pad_to)
    pixels, mask = pad_images(arrays, shape, granularity)
    labels = np.zeros((len(examples), max_targets), np.int32)
    boxes = np.zeros((len(examples), max_targets, 4), np.float32)
    valid = np.zeros((len(examples), max_targets), bool)
    for i, (e, a) in enumerate(zip(examples, arrays)):
        h, w = a.shape[:2]
        n = min(len(e["labels"]), max_targets)
        b = e["boxes"][:n]
        cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                           (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], -1)
        labels[i, :n], boxes[i, :n], valid[i, :n] = e["labels"][:n], cxcywh, True
    return {"pixel_values": pixels, "padding_mask": mask, "labels": labels, "boxes": boxes,
            "valid": valid, "image_ids": np.array([e["image_id"] for e in examples], np.int64)}
