"""DETR-DC5 ResNet-101 (official 44.9 AP model) evaluation settings."""

import ml_collections

from detr_jax.models.config import RESNET_STAGES, model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(backbone=dict(stages=RESNET_STAGES[101], dilation=True))
    cfg.data = ml_collections.ConfigDict(dict(size=800, max_size=1333, granularity=0))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=1, attention=("exact",), score_threshold=0.7, seed=0))
    return cfg
