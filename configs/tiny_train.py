"""Tiny training run for tests and CPU smoke checks (same code as the real configs)."""

import ml_collections

from detr_jax.evaluation.defaults import eval_config
from detr_jax.models.config import tiny_model_config
from detr_jax.training.defaults import loss_config, train_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = tiny_model_config(num_classes=9, backbone=dict(dilation=True))
    cfg.data = ml_collections.ConfigDict(dict(
        train_tfds_dir="", train_tfds_split="train",  # set: TFDS coco/2017 here, not the files below
        train_annotations="data/synthetic/annotations/instances_train.json",
        train_images="data/synthetic/train",
        val_annotations="data/synthetic/annotations/instances_val.json",
        val_images="data/synthetic/val",
        size=96, max_size=128, granularity=32,
        scales=(64, 80, 96), crop_resize_scales=(64, 80), crop_min=48, crop_max=80,
    ))
    cfg.train = train_config(
        global_batch=4, epochs=1, num_steps=4, lr_drop_epochs=(), max_targets=10,
        num_workers=2, prefetch=2, workers="thread", checkpoint_every=2, log_every=1,
        preemption_check_every=1)
    cfg.loss = loss_config()
    cfg.eval = eval_config(batch_size=2, attention=("exact",), score_threshold=0.0, granularity=32)
    return cfg
