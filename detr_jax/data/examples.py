"""A built-in example image (drawn, not downloaded) for demos and smoke runs."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def example_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic RGB scene: gradient background, a few filled shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                           np.full_like(x, 96)], axis=-1).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        w, h = rng.integers(width // 10, width // 3), rng.integers(height // 10, height // 3)
        x0, y0 = rng.integers(0, width - w), rng.integers(0, height - h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
    return image
