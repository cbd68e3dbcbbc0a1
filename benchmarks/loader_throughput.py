"""Images per second the training loader delivers (decode, augment, collate) on this host.

    python benchmarks/loader_throughput.py --config configs/synthetic_demo.py --batches 40

The loader is train.py's (``data.pipeline``: grain when installed, else threads);
``--pipeline threads`` or ``grain`` picks one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detr_jax.config_cli import apply_overrides, load_config_file  # noqa: E402
from detr_jax.data.augment import AugmentConfig  # noqa: E402
from detr_jax.data.coco import CocoSource  # noqa: E402
from detr_jax.training.grain_data import make_train_loader  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--pipeline", default=None, help="grain, threads or auto (default: the config's)")
    args, rest = parser.parse_known_args(argv)
    cfg = load_config_file(args.config)
    apply_overrides(cfg, rest)
    source = CocoSource(cfg.data.train_annotations, cfg.data.train_images)
    augment = AugmentConfig.from_data_config(cfg.data)
    pipeline = args.pipeline or cfg.data.get("pipeline", "auto")
    loader = make_train_loader(source, pipeline=pipeline, global_batch=cfg.train.global_batch, seed=0, augment=augment,
                         granularity=cfg.data.granularity, max_targets=cfg.train.max_targets,
                         num_workers=cfg.train.num_workers, prefetch=cfg.train.prefetch,
                         workers=cfg.train.workers, pad_to=tuple(cfg.train.pad_to) or None)
    it = loader.iterate(0, args.batches + 5)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    shapes = set()
    for _ in range(args.batches):
        shapes.add(next(it)["pixel_values"].shape[1:3])
    elapsed = time.perf_counter() - start
    images = args.batches * cfg.train.global_batch
    print(f"{images / elapsed:.1f} images/s with {cfg.train.num_workers} workers, "
          f"pipeline {loader.pipeline} "
          f"({len(shapes)} distinct batch shapes: {sorted(shapes)})")


if __name__ == "__main__":
    main()
