"""Backbone pretraining on object crops: crop geometry, and training that moves the backbone."""

import jax
import numpy as np
from PIL import Image

from detr_jax.data.coco import CocoSource
from detr_jax.data.source import training_targets
from detr_jax.models.build import build_model
from detr_jax.models.config import tiny_model_config
from detr_jax.training.backbone_pretrain import object_crop, object_crops, pretrain_backbone


def test_object_crop_is_square_around_the_box_with_context():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 100:140] = 255  # a 40 x 20 white box
    crop = object_crop(Image.fromarray(image), (100, 40, 140, 60), size=50, context=0.25)
    assert crop.shape == (50, 50, 3)
    # side 50 px around the centre (120, 50): the box spans columns 5..45, rows 15..35
    white = crop[..., 0] > 127
    cols, rows = np.nonzero(white.any(0))[0], np.nonzero(white.any(1))[0]
    assert abs(cols.min() - 5) <= 1 and abs(cols.max() - 44) <= 1
    assert abs(rows.min() - 15) <= 1 and abs(rows.max() - 34) <= 1


def test_pretraining_updates_the_backbone_and_reports_accuracy(synthetic_root):
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                        str(synthetic_root / "train"))
    crops, labels = object_crops(source, size=32, workers=2)
    assert crops.shape[1:] == (32, 32, 3) and crops.dtype == np.uint8
    assert len(crops) == len(labels) == sum(len(training_targets(source[i])[1]) for i in range(len(source)))
    model = build_model(tiny_model_config(num_classes=9), seed=0)
    before = jax.tree.map(np.array, jax.tree.leaves(model.backbone))
    stats = pretrain_backbone(model.backbone, crops, labels, num_classes=10, steps=3, batch_size=8,
                              holdout=0.2)
    after = jax.tree.leaves(model.backbone)
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert np.isfinite(stats["train_loss"]) and 0.0 <= stats["holdout_accuracy"] <= 1.0
