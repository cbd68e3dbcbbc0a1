"""The bound on the padded shapes of training batches that the COCO training configs
state: the enumeration replays the official resize rule, and every batch of augmented
images lands in the enumerated set."""

import os

import numpy as np
import pytest

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig, augmented_size
from detr_jax.data.buckets import resized_sizes, training_shapes
from detr_jax.data.collate import padded_shape
from detr_jax.data.transforms import resized_size
from detr_jax.training.defaults import resolve_global_batch, training_granularity

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = ["mtkd_detr_r50_dc5.py", "conditional_detr_r50.py", "anchor_detr_r50_dc5.py"]


def test_vectorized_resize_is_the_official_rule():
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.integers(1, 2000, 3000), [800, 600, 1, 533, 480, 1333]])
    w = np.concatenate([rng.integers(1, 2000, 3000), [1200, 800, 533, 1, 480, 1]])
    for size, max_size in [(800, 1333), (480, 1333), (600, None), (96, 128)]:
        got = resized_sizes(h, w, size, max_size)
        want = np.array([resized_size(int(a), int(b), size, max_size) for a, b in zip(h, w)])
        np.testing.assert_array_equal(np.stack(got, 1), want)


@pytest.fixture(scope="module")
def coco_shapes():
    cfg = load_config_file(os.path.join(ROOT, "configs", CONFIGS[0]))
    return cfg, training_shapes(AugmentConfig.from_data_config(cfg.data), 128)


def test_coco_training_configs_state_their_shape_bound(coco_shapes):
    cfg, shapes = coco_shapes
    assert len(shapes) == 70
    assert {h for h, _ in shapes} == {w for _, w in shapes} == set(range(128, 1409, 128))
    for name in CONFIGS:
        other = load_config_file(os.path.join(ROOT, "configs", name))
        assert training_granularity(other) == 128 and other.data.granularity == 0  # eval exact
        assert dict(other.data) == dict(other.data, scales=cfg.data.scales, max_size=1333)
        assert "at most 70 padded shapes" in open(os.path.join(ROOT, "configs", name)).read()


def test_augmented_batches_stay_within_the_bound(coco_shapes):
    cfg, shapes = coco_shapes
    augment = AugmentConfig.from_data_config(cfg.data)
    rng = np.random.default_rng(1)
    seen = set()
    for batch in range(400):
        sizes = [augmented_size(np.random.default_rng([batch, k]), int(h), int(w), augment)
                 for k, (h, w) in enumerate(rng.integers(32, 1334, (4, 2)))]
        shape = padded_shape([s[0] for s in sizes], [s[1] for s in sizes], 128)
        assert shape in shapes, (sizes, shape)
        seen.add(shape)
    assert len(seen) > 10


def test_per_device_batch_sets_the_global_batch():
    cfg = load_config_file(os.path.join(ROOT, "configs", "conditional_detr_r50.py"))
    assert resolve_global_batch(cfg.train, 8) == 16 and cfg.train.global_batch == 16
    assert resolve_global_batch(cfg.train, 256) == 512
    cfg.train.per_device_batch, cfg.train.global_batch = 0, 12
    assert resolve_global_batch(cfg.train, 256) == 12  # global_batch when per-device is 0
