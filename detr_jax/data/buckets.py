"""Shape buckets: how many compiled input shapes a set of image sizes needs.

    python -m detr_jax.data.buckets --annotations instances_val2017.json --granularity 64
    python -m detr_jax.data.buckets --sweep --granularity 64 128

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
    parser.add_argument("--granularity", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args(argv)
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
