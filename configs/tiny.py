"""A tiny DETR (same code, a few thousand parameters) for tests and CPU smoke runs."""

import ml_collections

from detr_jax.models.config import tiny_model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = tiny_model_config()
    cfg.data = ml_collections.ConfigDict(dict(size=128, max_size=213, granularity=32))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=2, attention=("exact",), score_threshold=0.0, seed=0))
    return cfg
