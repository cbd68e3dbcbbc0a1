"""Evaluation pre-processing of the official DETR: resize rule, normalization, padding.

``preprocess`` gives, for a list of images, the batch the official evaluation feeds the
model (shortest side to 800 with the longest at most 1333, PIL bilinear, ImageNet
normalization, zero padding at the bottom/right), in NHWC. With ``granularity`` the
padded size is rounded up to a multiple of it, so that varied image sizes share a few
compiled shapes (see docs/shape-buckets.md); without it the batch is padded to its own
maximum only, as the official code (the exact-shape protocol).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def resized_size(height: int, width: int, size: int = 800, max_size: int | None = 1333):
    """Official ``get_size_with_aspect_ratio``: (new_h, new_w) for an (h, w) image."""
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def to_pil_rgb(image) -> Image.Image:
    """PIL RGB image from a PIL image (any mode: L, CMYK, RGBA, P...) or an HWC/HW uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, "L").convert("RGB")
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4); got {array.shape}")
    return Image.fromarray(array[..., :3], "RGB")


def resize(image: Image.Image, size: int = 800, max_size: int | None = 1333) -> Image.Image:
    h, w = resized_size(image.height, image.width, size, max_size)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.BILINEAR)


def normalize(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 HWC ``(x / 255 - mean) / std``, in torch's operation order."""
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def padded_shape(heights: Sequence[int], widths: Sequence[int], granularity: int | None):
    """Batch spatial shape: the maximum, rounded up to ``granularity`` when given."""
    h, w = max(heights), max(widths)
    if granularity:
        h = int(math.ceil(h / granularity) * granularity)
        w = int(math.ceil(w / granularity) * granularity)
    return h, w


def pad_batch(arrays: Sequence[np.ndarray], shape: tuple[int, int] | None = None):
    """Zero-pad HWC arrays at the bottom/right -> (pixels (B, H, W, C), mask (B, H, W))."""
    if shape is None:
        shape = padded_shape([a.shape[0] for a in arrays], [a.shape[1] for a in arrays], None)
    batch = np.zeros((len(arrays), *shape, arrays[0].shape[-1]), np.float32)
    mask = np.ones((len(arrays), *shape), bool)
    for i, a in enumerate(arrays):
        if a.shape[0] > shape[0] or a.shape[1] > shape[1]:
            raise ValueError(f"image {i} of shape {a.shape[:2]} does not fit the padded shape {shape}")
        batch[i, :a.shape[0], :a.shape[1]] = a
        mask[i, :a.shape[0], :a.shape[1]] = False
    return batch, mask


@dataclasses.dataclass
class Batch:
    """A model-ready batch. pixel_values (B, H, W, 3) float32; padding_mask (B, H, W) bool,
    True on padding; original_sizes and image_sizes (B, 2) int (height, width) before and
    after resizing."""

    pixel_values: np.ndarray
    padding_mask: np.ndarray
    original_sizes: np.ndarray
    image_sizes: np.ndarray


def preprocess(images, *, size: int = 800, max_size: int | None = 1333,
               granularity: int | None = None, resize_images: bool = True) -> Batch:
    """Official evaluation transform of a list of images (PIL or uint8 arrays) into a Batch.

    granularity: pad the batch up to a multiple of this many pixels (shape buckets);
      None pads to the batch maximum only (official behaviour).
    resize_images: False skips the resize (inputs already at model resolution).
    """
    if isinstance(images, (Image.Image, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    pils = [to_pil_rgb(im) for im in images]
    if not pils:
        raise ValueError("preprocess needs at least one image")
    original = np.array([(p.height, p.width) for p in pils], np.int32)
    if resize_images:
        pils = [resize(p, size, max_size) for p in pils]
    arrays = [normalize(p) for p in pils]
    shape = padded_shape([a.shape[0] for a in arrays], [a.shape[1] for a in arrays], granularity)
    pixels, mask = pad_batch(arrays, shape)
    resized = np.array([a.shape[:2] for a in arrays], np.int32)
    return Batch(pixels, mask, original, resized)
