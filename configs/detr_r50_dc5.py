"""DETR-DC5 ResNet-50 (official 43.3 AP model) evaluation settings."""

import ml_collections

from detr_jax.models.config import model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(backbone=dict(dilation=True))
    cfg.data = ml_collections.ConfigDict(dict(
        size=800,          # shortest side after resizing
        max_size=1333,     # longest side limit
        granularity=0,     # pad to a multiple of this (shape buckets); 0 = exact shape
    ))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=1,      # DC5 was trained with one image per GPU: evaluate exact-shape
        attention=("exact",),
        score_threshold=0.7,
        seed=0,
    ))
    return cfg
