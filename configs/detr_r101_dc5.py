"""DETR-DC5 ResNet-101 (official 44.9 AP model) evaluation settings."""

import ml_collections

from detr_jax.evaluation.defaults import data_config, eval_config
from detr_jax.models.config import RESNET_STAGES, model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(backbone=dict(stages=RESNET_STAGES[101], dilation=True))
    cfg.data = data_config(granularity=0)
    cfg.eval = eval_config(batch_size=1)
    return cfg
