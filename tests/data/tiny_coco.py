"""A tiny COCO-format dataset written by the tests (nothing downloaded).

Five images with known boxes in categories 1-4 (the tiny model's classes): RGB JPEGs,
a grayscale JPEG, a CMYK JPEG, a PNG without annotations, and a crowd box. All 80 COCO
categories are listed (TFDS's coco builder requires them). Objects are small, medium and
large by COCO's area ranges so every AP column is defined.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from detr_jax.data.coco_names import COCO_CATEGORY_NAMES

# image id, file name, (width, height), PIL mode, boxes [x, y, w, h, category, iscrowd]
IMAGES = [
    (3, "000000000003.jpg", (160, 120), "RGB",
     [(10, 12, 20, 20, 1, 0), (50, 30, 45, 40, 2, 0), (5, 10, 150, 105, 3, 0)]),
    (7, "000000000007.jpg", (120, 160), "L",
     [(20, 20, 60, 50, 1, 0), (30, 90, 10, 12, 4, 0)]),
    (15, "000000000015.jpg", (140, 100), "CMYK",
     [(12, 8, 110, 88, 2, 0), (70, 10, 30, 25, 3, 0)]),
    (23, "000000000023.png", (100, 90), "RGB", []),
    (42, "000000000042.jpg", (128, 128), "RGB",
     [(8, 8, 100, 100, 4, 0), (60, 60, 30, 30, 1, 0), (0, 0, 40, 40, 2, 1)]),
]


def draw_image(width: int, height: int, boxes, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 // max(width, 1), y * 200 // max(height, 1),
                     np.full_like(x, 60)], -1).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(image)
    for bx, by, bw, bh, _, _ in boxes:
        colour = tuple(int(c) for c in rng.integers(30, 255, 3))
        draw.rectangle([bx, by, bx + bw - 1, by + bh - 1], fill=colour)
    return image.convert(mode)


def write_tiny_coco(root: str, split: str = "val2017") -> dict:
    """Write ``root/annotations/instances_<split>.json`` and ``root/<split>/*``; return the
    annotation dict."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations = [], []
    ann_id = 100
    for seed, (image_id, name, (w, h), mode, boxes) in enumerate(IMAGES):
        image = draw_image(w, h, boxes, mode, seed)
        path = os.path.join(root, split, name)
        image.save(path, quality=95) if name.endswith(".jpg") else image.save(path)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for bx, by, bw, bh, category, crowd in boxes:
            ann_id += 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category,
                                "bbox": [float(bx), float(by), float(bw), float(bh)],
                                "area": float(bw * bh) - 0.5, "iscrowd": crowd,
                                "segmentation": [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]})
    categories = [{"id": c, "name": n, "supercategory": "thing"}
                  for c, n in COCO_CATEGORY_NAMES.items()]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(dataset, f)
    return dataset


def prepare_tfds_coco(coco_dir: str, data_dir: str, split: str = "val2017") -> None:
    """Prepare TFDS's own ``coco/2017`` builder (validation split) from a COCO directory,
    as array_record, without TensorFlow or downloads: the builder's only TensorFlow use
    (``tf.int64`` in its feature spec) gets numpy's int64 while it runs, and its download
    step is replaced by the local directory; its ``_generate_examples`` runs unchanged.
    Needs tensorflow-datasets and array_record."""
    import types

    import tensorflow_datasets as tfds
    from tensorflow_datasets.object_detection import coco as tfds_coco

    class LocalCoco(tfds_coco.Coco, skip_registration=True):
        name = "coco"
        __module__ = "tiny_coco_tfds_builder"  # no builder files (checksums) to look up

        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator(name="validation", gen_kwargs=dict(
                image_dir=coco_dir, annotation_dir=coco_dir, split_name=split,
                annotation_type=tfds_coco.AnnotationType.BBOXES, panoptic_dir=None))]

    original = tfds_coco.tf
    tfds_coco.tf = types.SimpleNamespace(int64=np.int64)
    try:
        LocalCoco(config="2017", data_dir=data_dir, file_format="array_record").download_and_prepare()
    finally:
        tfds_coco.tf = original
