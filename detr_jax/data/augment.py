"""The official DETR training transforms, deterministic given a numpy Generator.

Horizontal flip (p = 0.5); then with p = 0.5 a multi-scale resize of the shortest side
to one of ``scales`` (longest side at most ``max_size``), otherwise a resize to one of
``crop_resize_scales``, a random crop of ``crop_min``..``crop_max`` pixels per side and
the multi-scale resize. Boxes are absolute xyxy; cropping clips them and drops those
left with no area.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from detr_jax.data.transforms import resized_size


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    scales: tuple = tuple(range(480, 801, 32))
    max_size: int = 1333
    crop_resize_scales: tuple = (400, 500, 600)
    crop_min: int = 384
    crop_max: int = 600
    flip: bool = True

    @classmethod
    def from_data_config(cls, data) -> "AugmentConfig":
        """From a config's ``data`` section; ``max_train_size`` (if set) bounds the
        training resize instead of the evaluation's ``max_size``."""
        return cls(scales=tuple(data.scales), max_size=data.get("max_train_size", data.max_size),
                   crop_resize_scales=tuple(data.crop_resize_scales), crop_min=data.crop_min,
                   crop_max=data.crop_max, flip=data.get("flip", True))


def hflip(image: Image.Image, boxes: np.ndarray):
    w = image.width
    flipped = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([w, 0, w, 0], np.float32)
    return image.transpose(Image.FLIP_LEFT_RIGHT), flipped


def resize(image: Image.Image, boxes: np.ndarray, size: int, max_size: int | None):
    h, w = resized_size(image.height, image.width, size, max_size)
    if (h, w) == (image.height, image.width):
        return image, boxes
    ratio = np.array([w / image.width, h / image.height] * 2, np.float32)
    return image.resize((w, h), Image.BILINEAR), boxes * ratio


def crop(image: Image.Image, boxes: np.ndarray, labels: np.ndarray, top, left, height, width):
    image = image.crop((left, top, left + width, top + height))
    shifted = boxes - np.array([left, top, left, top], np.float32)
    shifted = np.minimum(shifted.reshape(-1, 2, 2), np.array([width, height], np.float32))
    shifted = np.clip(shifted, 0, None)
    keep = np.all(shifted[:, 1, :] > shifted[:, 0, :], axis=1)
    return image, shifted.reshape(-1, 4)[keep], labels[keep]


def _crop_window(rng, height: int, width: int, min_size: int, max_size: int):
    """(top, left, h, w) of a random crop of ``min_size``..``max_size`` pixels per side
    (a side no larger than ``min_size`` is kept whole); the draws of ``random_size_crop``."""
    w = int(rng.integers(min_size, min(width, max_size) + 1)) if width > min_size else width
    h = int(rng.integers(min_size, min(height, max_size) + 1)) if height > min_size else height
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def random_size_crop(rng, image, boxes, labels, min_size, max_size):
    top, left, h, w = _crop_window(rng, image.height, image.width, min_size, max_size)
    return crop(image, boxes, labels, top, left, h, w)


def augmentation_plan(rng: np.random.Generator, height: int, width: int,
                      cfg: AugmentConfig = AugmentConfig()) -> list[tuple]:
    """The operations ``train_transform`` applies to an (height, width) image, drawing
    from ``rng`` in its order: ("flip",), ("resize", size, max_size) and ("crop", top,
    left, h, w). The draws depend on the image's size only, never on its pixels."""
    plan = []
    if cfg.flip and rng.random() < 0.5:
        plan.append(("flip",))
    if rng.random() < 0.5:
        plan.append(("resize", int(rng.choice(cfg.scales)), cfg.max_size))
        return plan
    size = int(rng.choice(cfg.crop_resize_scales))
    plan.append(("resize", size, None))
    height, width = resized_size(height, width, size, None)
    plan.append(("crop", *_crop_window(rng, height, width, cfg.crop_min, cfg.crop_max)))
    plan.append(("resize", int(rng.choice(cfg.scales)), cfg.max_size))
    return plan


def planned_size(plan: list[tuple], height: int, width: int) -> tuple[int, int]:
    """(height, width) of an image of (height, width) after the operations of ``plan``."""
    for op in plan:
        if op[0] == "resize":
            height, width = resized_size(height, width, op[1], op[2])
        elif op[0] == "crop":
            height, width = op[3], op[4]
    return height, width


def augmented_size(rng: np.random.Generator, height: int, width: int,
                   cfg: AugmentConfig = AugmentConfig()) -> tuple[int, int]:
    """(h, w) of ``train_transform(rng, image of (height, width), ...)``'s image, without
    pixels: the same plan from the same draws, so every process can compute every image's
    training size (and a global batch's padded shape) from the image sizes alone."""
    return planned_size(augmentation_plan(rng, height, width, cfg), height, width)


def train_transform(rng: np.random.Generator, image: Image.Image, boxes: np.ndarray,
                    labels: np.ndarray, cfg: AugmentConfig = AugmentConfig()):
    """(PIL image, (N, 4) xyxy boxes, (N,) labels) -> augmented (image, boxes, labels).

    Applies :func:`augmentation_plan` (whose size is :func:`augmented_size`)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32)
    for op in augmentation_plan(rng, image.height, image.width, cfg):
        if op[0] == "flip":
            image, boxes = hflip(image, boxes)
        elif op[0] == "resize":
            image, boxes = resize(image, boxes, op[1], op[2])
        else:
            image, boxes, labels = crop(image, boxes, labels, *op[1:])
    return image, boxes, labels
