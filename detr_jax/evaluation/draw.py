"""Draw detections (boxes, labels, scores) on an image."""

from __future__ import annotations

from PIL import Image, ImageDraw

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_detections(image: Image.Image, detections: list[dict]) -> Image.Image:
    """A copy of ``image`` with each ``{"box": [x0, y0, x1, y1], "name": str, "score": float}``."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        colour = PALETTE[det["label"] % len(PALETTE)]
        x0, y0, x1, y1 = det["box"]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
        text = f"{det['name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        draw.rectangle([left, top, right + 4, bottom + 2], fill=colour)
        draw.text((x0 + 2, y0), text, fill=(0, 0, 0))
    return canvas
