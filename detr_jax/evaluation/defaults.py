"""Default ``data`` and ``eval`` config sections shared by the configs and eval.py."""

from __future__ import annotations

import ml_collections

EVAL_DEFAULTS = dict(
    batch_size=1,            # global batch (sharded over all devices when bucketing)
    attention=("exact",),
    score_threshold=0.7,     # --images drawing only; COCO evaluation keeps every query
    seed=0,                  # PRNG key of every call (ACT / K-means draws)
    hash_seeds=1,            # > 1: hash draws per ACT / K-means setting, mean and std reported
    num_workers=4,           # host threads decoding and resizing images
    prefetch=4,              # batches prepared ahead
    max_images=0,            # > 0: evaluate only the first N images (labelled partial)
    flops_images=100,        # GFLOPs averaged over the first N images (the paper's protocol)
    warmup_batches=1,        # batches left out of the time per image (besides compiles)
    skip_bad_images=False,   # skip (and report) undecodable images instead of stopping
    matmul_precision="default",  # float32 products: default, high or highest (detr_jax.precision)
    compilation_cache="~/.cache/detr_jax/jax_compilation_cache",  # "none" turns it off
    plots=True,
    cluster_map_images=2,    # Figure 6 maps for the first N images (clustered settings)
    cluster_map_head=0,
)
DATA_DEFAULTS = dict(
    size=800, max_size=1333, granularity=0,
    coco_dir="", annotations="", image_root="", split="val2017",
    tfds_data_dir="", tfds_name="coco/2017", tfds_split="validation",
    pipeline="auto",  # training input: "grain", "threads" or "auto" (grain when installed)
)


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The ``data`` section: resize rule, shape-bucket granularity, dataset location."""
    return ml_collections.ConfigDict({**DATA_DEFAULTS, **overrides})


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """The ``eval`` section: batch, attention settings, pipeline and report options."""
    return ml_collections.ConfigDict({**EVAL_DEFAULTS, **overrides})
