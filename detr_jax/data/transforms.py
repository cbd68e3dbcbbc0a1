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

import numpy as np
from PIL import Image

from detr_jax.data.collate import pad_images
from detr_jax.data.normalize import normalize_host


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
    """``image`` resized by the official rule (PIL bilinear); the image itself when the
    rule keeps its size."""
    h, w = resized_size(image.height, image.width, size, max_size)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.BILINEAR)


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
    arrays = [np.asarray(p, np.uint8) for p in pils]
    pixels, mask = pad_images(arrays, granularity=granularity)
    pixel_values = np.where(mask[..., None], np.float32(0), normalize_host(pixels))
    resized = np.array([a.shape[:2] for a in arrays], np.int32)
    return Batch(pixel_values, mask, original, resized)
