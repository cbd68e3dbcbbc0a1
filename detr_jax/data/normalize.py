"""ImageNet normalization of uint8 RGB pixels, the one definition used by every path.

The official transform (torch ``ToTensor`` + ``Normalize``) computes, in float32,
``(x / 255 - mean) / std``. :func:`normalize_host` does exactly that in numpy (the public
``preprocess``); :func:`normalize` is the device version for training and evaluation
steps: a uint8 pixel has 256 values per channel, so it looks each one up in the (256, 3)
table that :func:`normalize_host` computes, which gives the host values bit for bit on
every backend (XLA's float32 division by a constant is not always correctly rounded).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_host(image) -> np.ndarray:
    """uint8 RGB (..., 3) (array or PIL image) -> float32 ``(x / 255 - mean) / std``, in
    torch's operation order."""
    x = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


# NORMALIZED[v, c]: the normalized value of channel c at uint8 value v.
NORMALIZED = normalize_host(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def normalize(pixel_values, padding_mask):
    """Model input from a padded batch, in jnp (usable inside jit).

    pixel_values: (B, H, W, 3) uint8 RGB, or float (already normalized: returned as
      float32 unchanged). padding_mask: (B, H, W) bool, True on padding.
    Returns (B, H, W, 3) float32: :func:`normalize_host` of every pixel, 0 on padding.
    """
    import jax.numpy as jnp
    if pixel_values.dtype != jnp.uint8:
        return pixel_values
    x = jnp.asarray(NORMALIZED)[pixel_values.astype(jnp.int32), jnp.arange(3)]
    return jnp.where(padding_mask[..., None], jnp.float32(0), x)
