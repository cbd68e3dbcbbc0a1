"""Write a COCO-format set at COCO image sizes (drawn scenes, random boxes with COCO ids).

    python benchmarks/device/make_coco_like.py --output /tmp/coco_like --images 60 [--split train2017]

Sizes cycle through 640x480 and 640x427 (landscape) and 480x640 (portrait), COCO's most
common sizes. Used to time evaluation of converted DETR-DC5 weights where COCO is absent.
"""

import argparse
import json
import os

import numpy as np

from detr_jax.data.coco_names import COCO_CATEGORY_NAMES
from detr_jax.data.examples import example_image

SIZES = [(640, 480), (640, 427), (480, 640)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--split", default="val2017", help="folder and annotation file name")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.output, args.split), exist_ok=True)
    os.makedirs(os.path.join(args.output, "annotations"), exist_ok=True)
    rng = np.random.default_rng(0)
    ids = sorted(COCO_CATEGORY_NAMES)
    images, annotations = [], []
    for i in range(args.images):
        w, h = SIZES[i % len(SIZES)]
        name = f"{i + 1:012d}.jpg"
        example_image(w, h, seed=i).save(os.path.join(args.output, args.split, name), quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for _ in range(int(rng.integers(1, 6))):
            bw, bh = rng.uniform(20, w / 2), rng.uniform(20, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(rng.choice(ids)), "bbox": [x, y, bw, bh],
                                "area": bw * bh, "iscrowd": 0})
    categories = [{"id": k, "name": v} for k, v in sorted(COCO_CATEGORY_NAMES.items())]
    with open(os.path.join(args.output, "annotations", f"instances_{args.split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


if __name__ == "__main__":
    main()
