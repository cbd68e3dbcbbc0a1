"""Training from TFDS coco/2017 (array_record) through ``data.train_tfds_dir``: the same
examples as the COCO directory it was prepared from, and a training run on it."""

import json
import os

import numpy as np
import pytest

from tests.data.tiny_coco import prepare_tfds_coco, write_tiny_coco

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    root = tmp_path_factory.mktemp("tfds_training")
    write_tiny_coco(str(root / "coco"))
    prepare_tfds_coco(str(root / "coco"), str(root / "tfds"))
    return root


def test_training_source_reads_tfds_when_its_directory_is_set(tfds_dir):
    import ml_collections

    from detr_jax.data.coco import CocoSource
    from detr_jax.data.tfds_source import TfdsCocoSource
    from detr_jax.training.cli import training_source
    from detr_jax.data.source import training_targets

    coco = str(tfds_dir / "coco")
    data = ml_collections.ConfigDict(dict(
        train_annotations=f"{coco}/annotations/instances_val2017.json",
        train_images=f"{coco}/val2017", train_tfds_dir="", train_tfds_split="validation"))
    files = training_source(data)
    assert isinstance(files, CocoSource)
    data.train_tfds_dir = str(tfds_dir / "tfds")
    tfds = training_source(data)
    assert isinstance(tfds, TfdsCocoSource) and tfds.split == "validation"
    assert len(tfds) == len(files) and tfds.image_sizes() == files.image_sizes()
    for i in range(len(files)):
        a, b = training_targets(files[i]), training_targets(tfds[i])
        np.testing.assert_allclose(a[0], b[0], atol=1e-3)
        np.testing.assert_array_equal(a[1], b[1])
    data.train_tfds_split = "train"  # the tiny dataset has no such split
    with pytest.raises(ValueError, match="train"):
        training_source(data)


def test_train_cli_trains_from_tfds(tfds_dir, tmp_path):
    from detr_jax.training.cli import main

    rc = main(["--config", os.path.join(ROOT, "configs", "tiny_train.py"), "--workdir", str(tmp_path),
               "--no-progress", f"--config.data.train_tfds_dir={tfds_dir / 'tfds'}",
               "--config.data.train_tfds_split=validation", "--config.train.num_steps=2",
               "--config.train.eval_every=0", "--config.train.workers=thread"])
    assert rc == 0
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
    assert steps and max(steps) <= 2
    assert os.path.isdir(tmp_path / "model")
