import pytest

from detr_jax.data.synthetic import generate_split


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_split(str(root), "train", 16, seed=0)
    generate_split(str(root), "val", 4, seed=0)
    return root
