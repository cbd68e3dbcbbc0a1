"""Detections on your own images, for any encoder-attention setting."""

from __future__ import annotations

import io
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from detr_jax import paths as storage
from detr_jax.data.coco_names import category_name
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.draw import draw_detections
from detr_jax.evaluation.layer_stats import read_layer_stats
from detr_jax.evaluation.postprocess import postprocess
from detr_jax.models.inference import Forward


def open_image(path: str) -> Image.Image:
    """Open an image as RGB (grayscale, palette, CMYK converted); errors name the file.
    ``path`` may be a URL (``gs://...``, ``file://...``)."""
    if not storage.exists(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():  # a decompression bomb is an undecodable image
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if storage.is_url(path):
                with storage.open_file(path, "rb") as f:
                    source = io.BytesIO(f.read())
            else:
                source = path
            with Image.open(source) as im:
                im.load()
                return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise ValueError(f"image {path} cannot be decoded: {err}") from None


def output_stems(paths) -> list[str]:
    """A distinct output name stem per input: the file's stem, its name with the extension
    where stems collide (``d1/same.jpg``, ``d2/same.png`` -> ``same.jpg``, ``same.png``),
    and ``-2``, ``-3`` ... after that where whole names collide too."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [os.path.basename(p) for p in paths]
    out, used = [], set()
    for stem, name in zip(stems, names):
        candidate = stem if stems.count(stem) == 1 else name
        unique, n = candidate, 1
        while unique in used:
            n += 1
            unique = f"{candidate}-{n}"
        used.add(unique)
        out.append(unique)
    return out


def predict_images(model, paths, output_dir: str, *, setting: str, threshold: float = 0.7,
                   size: int = 800, max_size: int = 1333, seed: int = 0,
                   skip_bad_images: bool = False) -> dict:
    """Run ``model`` on each image (batch 1, exact shape), write ``<stem>.<setting>.json``
    and ``<stem>.<setting>.png`` (boxes drawn) to ``output_dir`` (stems made distinct by
    :func:`output_stems`); return a summary. With ``skip_bad_images`` undecodable images
    are listed in ``summary["skipped"]`` instead of raising ValueError."""
    output_dir = storage.makedirs(output_dir)  # a local path or a URL (gs://...)
    forward = Forward(model)
    num_classes = model.config["num_classes"]
    tag = setting.replace(":", "_").replace(",", "_").replace("=", "")
    summary = {"setting": setting, "images": [], "skipped": []}
    rng = jax.random.key(seed)
    for path, stem in zip(paths, output_stems(paths)):
        try:
            image = open_image(path)
        except (ValueError, FileNotFoundError) as err:
            if not skip_bad_images:
                raise
            summary["skipped"].append({"image": path, "reason": str(err)})
            continue
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
        record = {"image": storage.resolve(path), "width": image.width, "height": image.height,
                  "attention": setting, "threshold": threshold, "seconds": round(elapsed, 4),
                  "detections": detections}
        layers = [read_layer_stats(s) for s in out.get("encoder_stats") or []]
        if layers and all(layer is not None for layer in layers):
            record["clusters_per_layer"] = [np.asarray(layer[0]).mean().item() for layer in layers]
        json_path = storage.join(output_dir, f"{stem}.{tag}.json")
        storage.write_text(json_path, json.dumps(record, indent=2))
        png = io.BytesIO()
        draw_detections(image, detections).save(png, format="PNG")
        storage.write_bytes(storage.join(output_dir, f"{stem}.{tag}.png"), png.getvalue())
        summary["images"].append({"image": path, "detections": len(detections),
                                  "seconds": elapsed, "json": json_path})
    summary["compiles"] = forward.compiles
    return summary
