import os

import pytest

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig
from detr_jax.data.coco import CocoSource
from detr_jax.data.synthetic import generate_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_split(str(root), "train", 16, seed=0)
    generate_split(str(root), "val", 4, seed=0)
    return root


@pytest.fixture(scope="module")
def source_and_augment(synthetic_root):
    """(the synthetic training split as a CocoSource, tiny_train.py's augmentation)."""
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                        str(synthetic_root / "train"))
    return source, AugmentConfig.from_data_config(cfg.data)
