"""Shape buckets: how many compiled input shapes a set of image sizes needs.

    python -m detr_jax.data.buckets --annotations instances_val2017.json --granularity 64
    python -m detr_jax.data.buckets --sweep --granularity 64 128
    python -m detr_jax.data.buckets --training --config configs/mtkd_detr_r50_dc5.py

Every image is resized by the official rule and its padded shape is rounded up to a
multiple of the granularity; each distinct (H, W) is one compile of the jitted model.
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

from detr_jax.data.collate import padded_shape
from detr_jax.data.transforms import resized_size


def bucket_counts(sizes, granularity: int | None, size: int = 800, max_size: int = 1333):
    """Counter of padded (H, W) shapes for (height, width) image sizes at batch 1."""
    counter = collections.Counter()
    for h, w in sizes:
        rh, rw = resized_size(int(h), int(w), size, max_size)
        counter[padded_shape([rh], [rw], granularity)] += 1
    return counter


def resized_sizes(heights: np.ndarray, widths: np.ndarray, size: int, max_size: int | None):
    """:func:`~detr_jax.data.transforms.resized_size` of arrays of sizes at once."""
    h, w = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    short, long = np.minimum(h, w).astype(np.float64), np.maximum(h, w).astype(np.float64)
    target = np.full(h.shape, size, np.int64)
    if max_size is not None:
        limited = long / short * size > max_size
        target = np.where(limited, np.round(max_size * short / long).astype(np.int64), target)
    keep = ((w <= h) & (w == target)) | ((h <= w) & (h == target))
    portrait = w < h
    new_h = np.where(portrait, (target * h / w).astype(np.int64), target)
    new_w = np.where(portrait, target, (target * w / h).astype(np.int64))
    return np.where(keep, h, new_h), np.where(keep, w, new_w)


def training_shapes(augment, granularity: int, min_side: int = 32,
                    max_side: int = 1333) -> set[tuple[int, int]]:
    """Every padded (H, W) a training batch of two or more images can take under the
    augmentation ``augment`` (:class:`~detr_jax.data.augment.AugmentConfig`) and
    ``granularity``, for any images of ``min_side`` to ``max_side`` pixels a side (an
    image a few pixels tall can exceed ``max_size`` by up to half its aspect ratio: the
    official rule rounds its short side).

    The last operation of every augmentation is the multi-scale resize of an image (the
    original, or a crop of at most ``crop_max`` pixels a side), so an image's padded shape
    is one of a resize of some (h, w) <= ``max_side``; a batch's is the elementwise maximum
    of its images', which two images already reach (one the tallest, one the widest).
    """
    sides = np.arange(min_side, max_side + 1)
    h, w = (a.ravel() for a in np.meshgrid(sides, sides))
    single = set()
    for scale in augment.scales:
        rh, rw = resized_sizes(h, w, int(scale), augment.max_size)
        rh, rw = -(-rh // granularity) * granularity, -(-rw // granularity) * granularity
        single |= set(zip(rh.tolist(), rw.tolist()))
    return {(max(a[0], b[0]), max(a[1], b[1])) for a in single for b in single}


def sweep_sizes(long_side: int = 640, ratios=np.linspace(1.0, 3.0, 201)):
    """Landscape and portrait images of every aspect ratio from 1:1 to 3:1."""
    out = []
    for r in ratios:
        short = max(1, int(round(long_side / r)))
        out += [(short, long_side), (long_side, short)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", help="COCO-format annotation JSON (uses images[].width/height)")
    parser.add_argument("--sweep", action="store_true", help="all aspect ratios 1:1..3:1, both orientations")
    parser.add_argument("--training", action="store_true",
                        help="count the padded shapes of training batches of --config")
    parser.add_argument("--config", help="a training config (with --training)")
    parser.add_argument("--granularity", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args(argv)
    if args.training:
        from detr_jax.config_cli import load_config_file
        from detr_jax.data.augment import AugmentConfig
        cfg = load_config_file(args.config)
        augment = AugmentConfig.from_data_config(cfg.data)
        granularity = cfg.train.get("granularity") or cfg.data.granularity
        if not granularity:
            parser.error(f"{args.config} pads training batches to their own maximum: unbounded")
        shapes = training_shapes(augment, granularity)
        heights, widths = sorted({s[0] for s in shapes}), sorted({s[1] for s in shapes})
        print(f"{args.config}: granularity {granularity}: at most {len(shapes)} training batch "
              f"shapes (heights {heights[0]}..{heights[-1]}, widths {widths[0]}..{widths[-1]})")
        return 0
    if args.annotations:
        with open(args.annotations) as f:
            images = json.load(f)["images"]
        sizes = [(im["height"], im["width"]) for im in images]
    elif args.sweep:
        sizes = sweep_sizes()
    else:
        parser.error("give --annotations FILE or --sweep")
    exact = bucket_counts(sizes, None)
    print(f"{len(sizes)} images; exact shapes (no bucketing): {len(exact)}")
    for g in args.granularity:
        counts = bucket_counts(sizes, g)
        pixels = sum(h * w * n for (h, w), n in counts.items())
        valid = sum(np.prod(resized_size(h, w)) for h, w in sizes)
        print(f"granularity {g}: {len(counts)} shapes, padding overhead {pixels / valid - 1:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
