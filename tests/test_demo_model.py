"""The bundled demo model (models/demo): its config is the recipe's, and it finds the
synthetic benchmark's objects (same class, IoU >= 0.5) on validation images."""

import os

import jax.numpy as jnp
import numpy as np

from detr_jax.checkpoint import load_model
from detr_jax.config_cli import load_config_file
from detr_jax.data.synthetic import render_image
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.postprocess import postprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def box_iou_matrix(a, b):
    """(N, 4), (M, 4) xyxy -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def test_bundled_demo_model_matches_its_recipe_and_detects_objects():
    model = load_model(os.path.join(ROOT, "models", "demo"))
    cfg = load_config_file(os.path.join(ROOT, "configs", "synthetic_demo.py"))
    for key in ("hidden_dim", "enc_layers", "dec_layers", "num_queries", "num_classes", "pre_norm"):
        assert model.config[key] == cfg.model[key], key
    found = total = 0
    for index in range(6):
        image, annotations = render_image(0, "val", index)
        batch = preprocess([image], size=cfg.data.size, max_size=cfg.data.max_size,
                           granularity=cfg.data.granularity)
        outputs = model(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask))
        det = postprocess(outputs, batch.original_sizes)[0]
        keep = det["scores"] >= 0.5
        gt = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)], np.float32)
        iou = box_iou_matrix(gt, det["boxes"][keep])
        same = np.array([a["category_id"] for a in annotations])[:, None] == det["labels"][keep][None]
        found += int(((iou >= 0.5) & same).any(1).sum())
        total += len(annotations)
    assert total > 10 and found / total >= 0.5, (found, total)
