"""Detections on your own images, for any encoder-attention setting."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from detr_jax.data.coco_names import category_name
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.draw import draw_detections
from detr_jax.evaluation.layer_stats import read_layer_stats
from detr_jax.evaluation.postprocess import postprocess
from detr_jax.models.inference import Forward


def open_image(path: str) -> Image.Image:
    """Open an image as RGB (grayscale, palette, CMYK converted); errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} cannot be decoded: {err}") from None


def predict_images(model, paths, output_dir: str, *, setting: str, threshold: float = 0.7,
                   size: int = 800, max_size: int = 1333, seed: int = 0) -> dict:
    """Run ``model`` on each image (batch 1, exact shape), write ``<stem>.<setting>.json``
    and ``<stem>.<setting>.png`` (boxes drawn) to ``output_dir``; return a summary."""
    os.makedirs(output_dir, exist_ok=True)
    forward = Forward(model)
    num_classes = model.config["num_classes"]
    tag = setting.replace(":", "_").replace(",", "_").replace("=", "")
    summary = {"setting": setting, "images": []}
    rng = jax.random.key(seed)
    for path in paths:
        image = open_image(path)
        batch = preprocess([image], size=size, max_size=max_size)
        start = time.perf_counter()
        out = forward(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask), rng)
        result = postprocess(out, batch.original_sizes, model=model)[0]
        elapsed = time.perf_counter() - start
        keep = np.nonzero(result["scores"] >= threshold)[0]
        keep = keep[np.argsort(-result["scores"][keep])]
        detections = [{"label": int(result["labels"][i]),
                       "name": category_name(int(result["labels"][i]), num_classes),
                       "score": float(result["scores"][i]),
                       "box": [round(float(v), 2) for v in result["boxes"][i]]} for i in keep]
        stem = os.path.splitext(os.path.basename(path))[0]
        record = {"image": os.path.abspath(path), "width": image.width, "height": image.height,
                  "attention": setting, "threshold": threshold, "seconds": round(elapsed, 4),
                  "detections": detections}
        layers = [read_layer_stats(s) for s in out.get("encoder_stats") or []]
        if layers and all(layer is not None for layer in layers):
            record["clusters_per_layer"] = [np.asarray(layer[0]).mean().item() for layer in layers]
        json_path = os.path.join(output_dir, f"{stem}.{tag}.json")
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, json_path)
        draw_detections(image, detections).save(os.path.join(output_dir, f"{stem}.{tag}.png"))
        summary["images"].append({"image": path, "detections": len(detections),
                                  "seconds": elapsed, "json": json_path})
    summary["compiles"] = forward.compiles
    return summary
