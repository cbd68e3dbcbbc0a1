"""The bundled demo detector: a small DC5 DETR trained from scratch on the synthetic benchmark.

    python -m detr_jax.data.synthetic --output data/synthetic --train 4000 --val 300
    python train.py --config configs/synthetic_demo.py --workdir runs/demo
"""

import ml_collections

from detr_jax.data.synthetic import CLASSES
from detr_jax.models.config import model_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = model_config(
        backbone=dict(stages=(2, 2, 2, 2), width=16, dilation=True),
        hidden_dim=128, num_heads=8, enc_layers=6, dec_layers=6, ffn_dim=512,
        dropout=0.1, num_queries=30, num_classes=len(CLASSES) + 1)
    cfg.data = ml_collections.ConfigDict(dict(
        root="data/synthetic",
        train_annotations="data/synthetic/annotations/instances_train.json",
        train_images="data/synthetic/train",
        val_annotations="data/synthetic/annotations/instances_val.json",
        val_images="data/synthetic/val",
        size=384, max_size=640, granularity=64,
        scales=(288, 320, 352, 384, 416, 448), crop_resize_scales=(240, 300, 360),
        crop_min=192, crop_max=360,
    ))
    cfg.train = ml_collections.ConfigDict(dict(
        seed=0, global_batch=32, epochs=60, num_steps=0,  # num_steps > 0 overrides epochs
        lr=2e-4, lr_backbone=2e-4, weight_decay=1e-4, clip_norm=0.1, lr_drop_epochs=(45,),
        frozen=(),  # trained from scratch: nothing frozen but BatchNorm (always frozen)
        max_targets=30, num_workers=8, prefetch=4,
        checkpoint_every=500, keep=3, async_checkpoints=True, log_every=20, eval_every=0,
        preemption_check_every=10, init_checkpoint="",
    ))
    cfg.loss = ml_collections.ConfigDict(dict(ce=1.0, bbox=5.0, giou=2.0, eos_coef=0.1, aux=True))
    cfg.eval = ml_collections.ConfigDict(dict(
        batch_size=8, attention=("exact", "act:L=32", "act:L=24", "act:L=20", "act:L=16"),
        score_threshold=0.5, seed=0, granularity=64))
    return cfg
