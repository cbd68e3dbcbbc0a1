"""DETR-DC5 ResNet-50 (official 43.3 AP model) evaluation settings."""

import ml_collections

from detr_jax.evaluation.defaults import data_config, eval_config
from detr_jax.models.config import model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(backbone=dict(dilation=True))
    # DC5 was trained with one image per GPU: evaluate at batch 1 with exact shapes
    cfg.data = data_config(size=800, max_size=1333, granularity=0)
    cfg.eval = eval_config(batch_size=1, attention=("exact",), score_threshold=0.7)
    return cfg
