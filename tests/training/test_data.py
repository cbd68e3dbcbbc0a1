"""Training loader: deterministic batches whatever the workers, fixed padding; device
normalization equals the host's bit for bit."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig
from detr_jax.data.coco import CocoSource
from detr_jax.data.normalize import normalize, normalize_host
from detr_jax.training.data import TrainLoader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def source_and_augment(synthetic_root):
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                        str(synthetic_root / "train"))
    return source, AugmentConfig.from_data_config(cfg.data)


def loader(source, augment, **kw):
    return TrainLoader(source, global_batch=4, seed=3, augment=augment, granularity=32,
                       max_targets=10, num_workers=2, **kw)


def test_process_workers_give_the_thread_batches(source_and_augment):
    source, augment = source_and_augment
    threads = list(loader(source, augment, workers="thread").iterate(1, 4))
    processes = list(loader(source, augment, workers="process").iterate(1, 4))
    assert [b["step"] for b in processes] == [1, 2, 3]
    for a, b in zip(threads, processes):
        assert a["pixel_values"].dtype == np.uint8
        for key in ("pixel_values", "padding_mask", "labels", "boxes", "valid", "image_ids"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pad_to_fixes_the_shape_and_rejects_what_does_not_fit(source_and_augment):
    source, augment = source_and_augment
    batch = loader(source, augment, pad_to=(160, 192)).batch(0)
    assert batch["pixel_values"].shape[1:3] == (160, 192)
    assert batch["padding_mask"][:, -1, -1].all()
    with pytest.raises(ValueError, match="train.pad_to"):
        loader(source, augment, pad_to=(32, 32)).batch(0)


def test_device_normalization_equals_host_normalization(source_and_augment):
    source, augment = source_and_augment
    batch = loader(source, augment).batch(0)
    device = np.asarray(normalize(jnp.asarray(batch["pixel_values"]),
                                  jnp.asarray(batch["padding_mask"])))
    for i in range(len(device)):
        valid = ~batch["padding_mask"][i]
        h, w = valid.any(1).sum(), valid.any(0).sum()
        np.testing.assert_array_equal(device[i, :h, :w],
                                      normalize_host(batch["pixel_values"][i, :h, :w]))
        assert (device[i][~valid] == 0).all()
