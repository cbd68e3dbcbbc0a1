"""DETR ResNet-50 (official 42.0 AP model) evaluation settings."""

import ml_collections

from detr_jax.models.config import model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config()
    cfg.data = ml_collections.ConfigDict(dict(size=800, max_size=1333, granularity=64))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=4, attention=("exact",), score_threshold=0.7, seed=0))
    return cfg
