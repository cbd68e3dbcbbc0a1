"""Anchor DETR-DC5 R50 trained on COCO with the official recipe.

    python train.py --config configs/anchor_detr_r50_dc5.py --workdir runs/anchor_dc5
    python eval.py --checkpoint runs/anchor_dc5/model --coco-dir data/coco --attention exact

Sigmoid focal loss (alpha 0.25, gamma 2) with the focal matching cost (class 2, L1 5,
GIoU 2), loss weights 2 / 5 / 2, auxiliary losses (``detr_jax.training.focal``, the
detector's default loss); AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient
clipping 0.1, 50 epochs with the drop (x0.1) at 40, dropout 0; global batch 8 (the
official 8 GPUs x 1 image); DETR's augmentation; stem and layer1 frozen. The encoder is
RCDA, where only exact attention applies.

Training batches are padded to multiples of 128 pixels (``train.granularity``; evaluation
keeps ``data.granularity``), so the step compiles for at most 70 padded shapes (heights
and widths 128..1408) whatever the images (32 to 1333 pixels a side); the count:

    python -m detr_jax.data.buckets --training --config configs/anchor_detr_r50_dc5.py

The global batch is ``train.per_device_batch`` x the device count (8 on 8 devices), resolved
at start-up; ``--config.train.per_device_batch=0`` uses ``train.global_batch`` instead.
"""

import ml_collections

from detr_jax.evaluation.defaults import data_config, eval_config
from detr_jax.models.anchor_detr import anchor_detr_config
from detr_jax.training.defaults import train_config
from detr_jax.training.focal import focal_loss_config


def get_config():
    cfg = ml_collections.ConfigDict()
    cfg.model = anchor_detr_config(dropout=0.0)
    cfg.data = data_config(
        size=800, max_size=1333, granularity=0,
        train_tfds_dir="", train_tfds_split="train",  # set: TFDS coco/2017 here, not the files below
        coco_dir="data/coco", train_annotations="data/coco/annotations/instances_train2017.json",
        train_images="data/coco/train2017",
        val_annotations="data/coco/annotations/instances_val2017.json",
        val_images="data/coco/val2017",
        scales=tuple(range(480, 801, 32)), crop_resize_scales=(400, 500, 600),
        crop_min=384, crop_max=600)
    cfg.train = train_config(
        per_device_batch=1, granularity=128,
        global_batch=8, epochs=50, lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4,
        clip_norm=0.1, lr_drop_epochs=(40,), max_targets=100, checkpoint_every=2000)
    cfg.loss = focal_loss_config()
    cfg.eval = eval_config(batch_size=1, attention=("exact",))
    return cfg
