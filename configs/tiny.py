"""A tiny DETR (same code, a few thousand parameters) for tests and CPU smoke runs."""

import ml_collections

from detr_jax.evaluation.defaults import data_config, eval_config
from detr_jax.models.config import tiny_model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = tiny_model_config()
    cfg.data = data_config(size=128, max_size=213, granularity=32)
    cfg.eval = eval_config(batch_size=2, score_threshold=0.0)
    return cfg
