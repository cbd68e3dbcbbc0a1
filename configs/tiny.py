"""A tiny DETR (same code, a few thousand parameters) for tests and CPU smoke runs."""

import ml_collections

from detr_jax.models.config import tiny_model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = tiny_model_config()
    cfg.data = ml_collections.ConfigDict(dict(
        size=128, max_size=213, granularity=32,
        coco_dir="", annotations="", image_root="", split="val2017",  # or the CLI flags
        tfds_data_dir="", tfds_name="coco/2017", tfds_split="validation",
    ))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=2, attention=("exact",), score_threshold=0.0, seed=0,
        num_workers=4,     # host threads decoding and resizing images
        prefetch=4,        # batches prepared ahead of the devices
        max_images=0,      # > 0: only the first N images (reported as partial)
        flops_images=100,  # GFLOPs averaged over the first N images (the paper's protocol)
        warmup_batches=1,  # batches left out of the time per image (besides compiles)
        skip_bad_images=False,
        compilation_cache="~/.cache/detr_jax/jax_compilation_cache",  # "none": off
        plots=True,
        cluster_map_images=2,  # Figure 6 cluster maps for the first N images
        cluster_map_head=0,
    ))
    return cfg
