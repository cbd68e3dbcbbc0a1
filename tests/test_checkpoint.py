"""detr_jax checkpoint directories: round trip, atomic writes, clear errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.convert import CheckpointError
from detr_jax.models.config import tiny_model_config


@pytest.fixture(scope="module")
def tiny_model():
    return detr_jax.build_model(tiny_model_config(), seed=3)


def test_round_trip_gives_identical_outputs(tiny_model, tmp_path):
    path = detr_jax.save_model(tiny_model, str(tmp_path / "ckpt"))
    loaded = detr_jax.load_model(path)
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    mask = jnp.zeros((1, 64, 64), bool)
    a, b = tiny_model(x, mask), loaded(x, mask)
    np.testing.assert_array_equal(a["pred_logits"], b["pred_logits"])
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directories left behind


def test_existing_directory_needs_overwrite(tiny_model, tmp_path):
    path = detr_jax.save_model(tiny_model, str(tmp_path / "ckpt"))
    with pytest.raises(FileExistsError, match="overwrite"):
        detr_jax.save_model(tiny_model, path)
    detr_jax.save_model(tiny_model, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_failed_save_leaves_previous_checkpoint_intact(tiny_model, tmp_path, monkeypatch):
    path = detr_jax.save_model(tiny_model, str(tmp_path / "ckpt"))
    before = sorted(os.listdir(path))
    import orbax.checkpoint as ocp

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        detr_jax.save_model(tiny_model, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert sorted(os.listdir(path)) == before
    detr_jax.load_model(path)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        detr_jax.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="unreadable config"):
        detr_jax.load_model(str(tmp_path))


def test_damaged_state_is_reported(tiny_model, tmp_path):
    path = detr_jax.save_model(tiny_model, str(tmp_path / "ckpt"))
    import shutil
    shutil.rmtree(os.path.join(path, "state"))
    with pytest.raises(CheckpointError, match="cannot restore"):
        detr_jax.load_model(path)


def test_config_that_disagrees_with_the_stored_weights_names_the_first_mismatch(tiny_model, tmp_path):
    path = detr_jax.save_model(tiny_model, str(tmp_path / "ckpt"))
    config_file = os.path.join(path, "config.json")
    payload = json.load(open(config_file))
    payload["model"]["hidden_dim"] = payload["model"]["hidden_dim"] * 2
    json.dump(payload, open(config_file, "w"))
    with pytest.raises(CheckpointError, match=r"config.json disagrees with the stored weights: "
                                              r"\S+ is stored as \(\d+"):
        detr_jax.load_model(path)
    payload["model"]["hidden_dim"] //= 2
    payload["model"]["dec_layers"] -= 1  # a layer the config does not describe
    json.dump(payload, open(config_file, "w"))
    with pytest.raises(CheckpointError, match=r"variables config.json does not describe, "
                                              r"e.g. transformer/decoder/layers/"):
        detr_jax.load_model(path)


def test_overwrite_refuses_what_is_not_a_model(tiny_model, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a detr_jax model"):
        detr_jax.save_model(tiny_model, str(other), overwrite=True)
    assert (other / "data.txt").read_text() == "mine"
