"""The detection data source interface shared by training and evaluation.

A source is random access to a dataset's images and annotations, in a fixed order:
``CocoSource`` (a COCO-format directory), ``TfdsCocoSource`` (TFDS ``coco/2017``) and
``SyntheticSource`` (the synthetic benchmark rendered in memory) implement it. Training
samples indices and augments ``source[i]`` (after :func:`training_targets`); evaluation
plans batches from ``image_sizes()`` and reads ``load_image(i, size, max_size)``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from detr_jax.data.coco import Example, ImageRecord


@runtime_checkable
class DetectionSource(Protocol):
    """Random access to detection examples.

    ``source[i]``: :class:`~detr_jax.data.coco.Example` (uint8 RGB image and its
    annotations as arrays). ``records[i]``: what is known of image i without decoding it
    (image id, file name, path, annotated size). ``image_sizes()``: (height, width) of
    every image ((0, 0) where unknown). ``load_image(i, size, max_size)``: the decoded image,
    resized once by the official rule when ``size`` is given, and its original (h, w).
    ``describe()``: one line naming the data. Sources that evaluate also give the
    pycocotools ground truth as ``coco``.
    """

    records: Sequence[ImageRecord]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...

    def image_sizes(self) -> list[tuple[int, int]]: ...

    def load_image(self, index: int, size: int | None = None, max_size: int | None = 1333
                   ) -> tuple[np.ndarray, tuple[int, int]]: ...

    def describe(self) -> str: ...


def training_targets(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """The training boxes of an example, as the official ``ConvertCocoPolysToMask``: crowd
    boxes dropped, the others clipped to the image and kept if they have an area.

    Returns (boxes (N, 4) float32 absolute xyxy, labels (N,) int32 category ids).
    """
    keep = ~np.asarray(example.iscrowd, bool)
    boxes = np.array(example.boxes, np.float32).reshape(-1, 4)[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, example.width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, example.height)
    area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = np.asarray(example.labels).astype(np.int32)[keep][area]
    return boxes[area], labels
