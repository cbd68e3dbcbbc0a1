"""Tiny training run for tests and CPU smoke checks (same code as the real configs)."""

import ml_collections

from detr_jax.models.config import tiny_model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = tiny_model_config(num_classes=9, backbone=dict(dilation=True))
    cfg.data = ml_collections.ConfigDict(dict(
        train_annotations="data/synthetic/annotations/instances_train.json",
        train_images="data/synthetic/train",
        val_annotations="data/synthetic/annotations/instances_val.json",
        val_images="data/synthetic/val",
        size=96, max_size=128, granularity=32,
        scales=(64, 80, 96), crop_resize_scales=(64, 80), crop_min=48, crop_max=80,
    ))
    cfg.train = ml_collections.ConfigDict(dict(
        seed=0, global_batch=4, epochs=1, num_steps=4, lr=1e-4, lr_backbone=1e-5,
        weight_decay=1e-4, clip_norm=0.1, lr_drop_epochs=(), frozen=("backbone.conv1", "backbone.layer1"),
        max_targets=10, num_workers=2, prefetch=2, checkpoint_every=2, keep=3,
        async_checkpoints=True, log_every=1, eval_every=0, preemption_check_every=1,
        init_checkpoint="",
    ))
    cfg.loss = ml_collections.ConfigDict(dict(ce=1.0, bbox=5.0, giou=2.0, eos_coef=0.1, aux=True))
    cfg.eval = ml_collections.ConfigDict(dict(batch_size=2, attention=("exact",), score_threshold=0.0,
                                              seed=0, granularity=32))
    return cfg
