"""A deterministic synthetic detection benchmark in COCO format (offline stand-in for COCO).

    python -m detr_jax.data.synthetic --output data/synthetic --train 4000 --val 300

Each image has a textured, cluttered background and 1-6 objects of eight shape classes
(circle, square, triangle, ring, cross, star, hexagon, bar), drawn in random colours and
textures (solid, stripes, checks, speckle) at sizes spanning COCO's small (< 32^2 px),
medium and large (> 96^2 px) areas, mostly inside the image. Later objects occlude
earlier ones; boxes and areas describe the visible part, and objects less than 50%
visible are not annotated. Image
sizes (288-448 x 384-576) give a stride-16 encoder 400 to 1000 tokens at the default eval
resolution (short side 384). Image ``i`` of a split depends only on (seed, split, i).

``generate_split`` writes a split as a COCO-format directory (JPEG, read back with
``CocoSource``); ``SyntheticSource`` renders it in memory (lossless) as a
:class:`~detr_jax.data.source.DetectionSource`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "ring", "cross", "star", "hexagon", "bar")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MIN_VISIBLE = 0.5


def categories():
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]


def _polygon(kind: str, cx, cy, size, angle, aspect):
    """Vertices of a shape of ``size`` (bounding extent) centred at (cx, cy)."""
    r = size / 2
    if kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "hexagon":
        pts = [(math.cos(angle + k * math.pi / 3), math.sin(angle + k * math.pi / 3)) for k in range(6)]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.45) * math.cos(angle + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.45) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    elif kind == "square":
        pts = [(math.cos(angle + math.pi / 4 + k * math.pi / 2) * math.sqrt(2) / 1.4,
                math.sin(angle + math.pi / 4 + k * math.pi / 2) * math.sqrt(2) / 1.4) for k in range(4)]
    elif kind == "bar":
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x * c - y * s, x * s + y * c) for x, y in
               [(-1, -aspect), (1, -aspect), (1, aspect), (-1, aspect)]]
    else:
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def _shape_mask(kind, height, width, cx, cy, size, angle, aspect) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    r = size / 2
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif kind == "cross":
        for a in (angle, angle + math.pi / 2):
            draw.polygon(_polygon("bar", cx, cy, size, a, 0.22), fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle, aspect), fill=255)
    return np.asarray(canvas) > 127


def _texture(rng, height, width, colour, box=None) -> np.ndarray:
    """(H, W, 3) float texture around ``colour``: solid, stripes, checks or speckle.

    box: (y0, y1, x0, x1): return only that part of the texture, (y1 - y0, x1 - x0, 3)
    (the same values, and the same draws from ``rng``, as the whole texture's).
    """
    y0, y1, x0, x1 = box if box is not None else (0, height, 0, width)
    kind = rng.integers(4)
    base = np.broadcast_to(np.asarray(colour, np.float32), (y1 - y0, x1 - x0, 3)).copy()
    if kind == 0:
        return base
    other = rng.uniform(0, 255, 3).astype(np.float32)
    y, x = np.mgrid[y0:y1, x0:x1]
    period = rng.integers(4, 14)
    if kind == 1:
        angle = rng.uniform(0, math.pi)
        pattern = (np.floor((x * math.cos(angle) + y * math.sin(angle)) / period) % 2).astype(bool)
    elif kind == 2:
        pattern = ((x // period + y // period) % 2).astype(bool)
    else:
        pattern = (rng.random((height, width)) < 0.3)[y0:y1, x0:x1]
    base[pattern] = 0.5 * base[pattern] + 0.5 * other
    return base


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) bounding the True pixels of ``mask`` ((0, 0, 0, 0) when none)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _background(rng, height, width) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    t = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) / (width + height) + 0.5
    image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    image += rng.normal(0, rng.uniform(2, 14), (height, width, 1))
    clutter = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(rng.integers(2, 9)):  # unannotated lines and dots
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            pts = [tuple(float(v) for v in rng.uniform(0, 1, 2) * (width, height)) for _ in range(2)]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)))
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(1, 4)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    return np.asarray(clutter).astype(np.float32)


def _image_rng(seed: int, split: str, index: int):
    """(generator, height, width) of image ``index``: its size is the generator's first
    two draws."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    return rng, int(rng.integers(288, 449)), int(rng.integers(384, 577))


def image_size(seed: int, split: str, index: int) -> tuple[int, int]:
    """(height, width) of image ``index`` of ``split``, without rendering it."""
    return _image_rng(seed, split, index)[1:]


def render_image(seed: int, split: str, index: int):
    """Render image ``index`` of ``split`` -> (uint8 HWC image, list of annotations)."""
    rng, height, width = _image_rng(seed, split, index)
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)
    objects = []
    for obj in range(int(rng.integers(1, 7))):
        kind_id = int(rng.integers(len(CLASSES)))
        # log-uniform extent: about 30% small, 55% medium, 15% large (by visible area)
        size = float(math.exp(rng.uniform(math.log(24), math.log(0.6 * min(height, width)))))
        # centres keep at least 80% of the extent inside the image
        margin = 0.3 * size
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        mask = _shape_mask(CLASSES[kind_id], height, width, cx, cy, size,
                           rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.45))
        drawn = int(mask.sum())
        colour = rng.uniform(0, 255, 3)
        box = _mask_box(mask)
        texture = _texture(rng, height, width, colour, box)
        if drawn < 12:
            continue
        y0, y1, x0, x1 = box
        inside = mask[y0:y1, x0:x1]
        image[y0:y1, x0:x1][inside] = texture[inside]
        owner[y0:y1, x0:x1][inside] = obj
        objects.append((obj, kind_id, drawn))
    annotations = []
    for obj, kind_id, drawn in objects:
        visible = owner == obj
        area = int(visible.sum())
        if area < max(12, MIN_VISIBLE * drawn):
            continue
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        annotations.append({"category_id": kind_id + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": area, "iscrowd": 0})
    return np.clip(image, 0, 255).astype(np.uint8), annotations


def _write_one(args):
    root, split, seed, index = args
    image, annotations = render_image(seed, split, index)
    name = f"{index:06d}.jpg"
    Image.fromarray(image).save(os.path.join(root, split, name), quality=92)
    return index, name, image.shape[:2], annotations


def generate_split(root: str, split: str, num_images: int, *, seed: int = 0, workers: int = 0,
                   progress: bool = False):
    """Write ``root/<split>/*.jpg`` and ``root/annotations/instances_<split>.json``
    (``progress``: a progress bar over the images, on stderr)."""
    import sys

    from tqdm import tqdm
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    jobs = [(root, split, seed, i) for i in range(num_images)]
    bar = tqdm(total=num_images, unit="img", desc=f"synthetic {split}", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    with bar:
        if workers and workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = []
                for result in pool.map(_write_one, jobs, chunksize=8):
                    results.append(result)
                    bar.update(1)
        else:
            results = []
            for job in jobs:
                results.append(_write_one(job))
                bar.update(1)
    images, annotations = [], []
    for index, name, (h, w), anns in sorted(results):
        images.append({"id": index + 1, "file_name": name, "height": int(h), "width": int(w)})
        for ann in anns:
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=index + 1))
    dataset = {"info": {"description": f"detr_jax synthetic shapes, split {split}, seed {seed}"},
               "images": images, "annotations": annotations, "categories": categories()}
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dataset, f)
    os.replace(path + ".tmp", path)
    return path


class SyntheticSource:
    """The first ``num_images`` images of a synthetic split, rendered on access (no files,
    no JPEG loss). Image ``i`` has id ``i + 1`` (as ``generate_split``) and file name
    ``{i:06d}.jpg``; its annotation ids are ``100 * (i + 1) + k`` (the written annotation
    file numbers them through the split instead)."""

    kind = "synthetic"

    def __init__(self, num_images: int, split: str = "val", seed: int = 0):
        if split not in SPLIT_IDS:
            raise ValueError(f"split {split!r}: choose one of {sorted(SPLIT_IDS)}")
        from detr_jax.data.coco import ImageRecord
        self.split, self.seed = split, seed
        self.records = []
        for i in range(num_images):
            h, w = image_size(seed, split, i)
            name = f"{i:06d}.jpg"
            self.records.append(ImageRecord(i, i + 1, name, f"synthetic:{split}/{name}", h, w))
        self.category_ids = [c["id"] for c in categories()]
        self.category_names = {c["id"]: c["name"] for c in categories()}
        self._coco = None

    def describe(self) -> str:
        """One line naming the data, for logs and reports."""
        return f"synthetic shapes split {self.split} seed {self.seed} ({len(self)} images)"

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image (computed without rendering)."""
        return [(r.height, r.width) for r in self.records]

    def _annotations(self, index: int) -> tuple[np.ndarray, list[dict]]:
        image, annotations = render_image(self.seed, self.split, index)
        image_id = self.records[index].image_id
        return image, [dict(a, id=100 * image_id + k, image_id=image_id)
                       for k, a in enumerate(annotations)]

    def __getitem__(self, index: int):
        from detr_jax.data.coco import Example, annotations_to_arrays
        image, annotations = self._annotations(index)
        record = self.records[index]
        return Example(record.image_id, record.file_name, image,
                       *annotations_to_arrays(annotations))

    def load_image(self, index: int, size: int | None = None, max_size: int | None = 1333):
        """Image ``index`` (resized by the official rule when ``size`` is given) ->
        ((h, w, 3) uint8, (original height, original width))."""
        from detr_jax.data.transforms import resize
        image = render_image(self.seed, self.split, index)[0]
        original = image.shape[:2]
        if size is not None:
            image = np.asarray(resize(Image.fromarray(image, "RGB"), size, max_size), np.uint8)
        return image, original

    @property
    def coco(self):
        """pycocotools ground truth of the rendered annotations (renders every image once)."""
        if self._coco is None:
            from detr_jax.data.coco import coco_from_dict
            images = [{"id": r.image_id, "file_name": r.file_name, "height": r.height,
                       "width": r.width} for r in self.records]
            annotations = [a for i in range(len(self)) for a in self._annotations(i)[1]]
            self._coco = coco_from_dict({"images": images, "annotations": annotations,
                                         "categories": categories()})
        return self._coco


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/synthetic")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for split, count in (("train", args.train), ("val", args.val)):
        if count:
            path = generate_split(args.output, split, count, seed=args.seed, workers=args.workers,
                                  progress=not args.no_progress)
            print(f"{split}: {count} images -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
