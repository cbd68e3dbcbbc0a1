"""DETR ResNet-50 (official 42.0 AP model) evaluation settings."""

import ml_collections

from detr_jax.evaluation.defaults import data_config, eval_config
from detr_jax.models.config import model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config()
    cfg.data = data_config(granularity=64)  # batches padded to shape buckets
    cfg.eval = eval_config(batch_size=4)
    return cfg
