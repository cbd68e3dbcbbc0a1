"""Converter: architecture inference and clear errors on bad checkpoints."""

import os

import numpy as np
import pytest

import detr_jax
from detr_jax.convert import CheckpointError
from detr_jax.convert.recipe import recipe_state_for_config
from detr_jax.models.config import RESNET_STAGES, model_config, tiny_model_config

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_state():
    return recipe_state_for_config(tiny_model_config(num_heads=8))


def save_pth(path, state):
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    return str(path)


def test_r101_dc5_inferred_from_shapes_and_file_name(tmp_path):
    cfg = model_config(backbone=dict(stages=RESNET_STAGES[101]), enc_layers=1, dec_layers=1,
                       num_queries=7, num_classes=20)
    state = recipe_state_for_config(cfg)
    model = detr_jax.load_torch_checkpoint(save_pth(tmp_path / "detr-r101-dc5-x.pth", state))
    assert tuple(model.config["backbone"]["stages"]) == (3, 4, 23, 3)
    assert model.config["backbone"]["dilation"] is True
    assert (model.config["num_queries"], model.config["num_classes"]) == (7, 20)
    assert model.config["enc_layers"] == 1 and model.config["dec_layers"] == 1
    plain = detr_jax.load_torch_checkpoint(state)
    assert plain.config["backbone"]["dilation"] is False
    forced = detr_jax.load_torch_checkpoint(state, dilation=True)
    assert forced.config["backbone"]["dilation"] is True


def test_loaded_values_are_placed_and_transposed(tiny_state):
    model = detr_jax.load_torch_checkpoint(tiny_state)
    d = model.config["hidden_dim"]
    packed = tiny_state["transformer.encoder.layers.1.self_attn.in_proj_weight"]
    attn = model.transformer.encoder.layers[1].self_attn
    np.testing.assert_array_equal(attn.k_proj.kernel[...], packed[d:2 * d].T)
    conv = tiny_state["backbone.0.body.layer2.0.conv2.weight"]
    np.testing.assert_array_equal(model.backbone.layer2[0].conv2.kernel[...], conv.transpose(2, 3, 1, 0))
    bn = tiny_state["backbone.0.body.layer1.0.downsample.1.running_var"]
    np.testing.assert_array_equal(model.backbone.layer1[0].downsample.bn.running_var[...], bn)


def test_missing_key_is_named(tiny_state, tmp_path):
    state = dict(tiny_state)
    del state["transformer.decoder.layers.1.norm3.bias"]
    path = save_pth(tmp_path / "missing.pth", state)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys: transformer\.decoder\.layers\.1\.norm3\.bias"):
        detr_jax.load_torch_checkpoint(path)


def test_unexpected_key_is_named(tiny_state):
    state = dict(tiny_state, **{"transformer.encoder.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: transformer\.encoder\.extra\.weight"):
        detr_jax.load_torch_checkpoint(state)


def test_wrong_shape_is_named(tiny_state):
    state = dict(tiny_state)
    state["bbox_embed.layers.0.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"bbox_embed\.layers\.0\.weight: \(3, 3\) \(expected"):
        detr_jax.load_torch_checkpoint(state)


def test_truncated_file(tiny_state, tmp_path):
    path = save_pth(tmp_path / "full.pth", tiny_state)
    data = open(path, "rb").read()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read the checkpoint"):
        detr_jax.load_torch_checkpoint(str(cut))


def test_corrupt_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="junk.pth"):
        detr_jax.load_torch_checkpoint(str(junk))
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        detr_jax.load_torch_checkpoint(str(tmp_path / "absent.pth"))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        detr_jax.load_torch_checkpoint(str(bad_st))


def test_not_a_detr_checkpoint(tmp_path):
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}
    path = tmp_path / "resnet50.pth"
    torch.save(resnet_like, path)
    with pytest.raises(CheckpointError, match=r"resnet50\.pth: not a DETR checkpoint.*conv1\.weight"):
        detr_jax.load_torch_checkpoint(str(path))


def test_non_tensor_entry(tiny_state):
    state = dict(tiny_state, **{"class_embed.weight": "oops"})
    with pytest.raises(CheckpointError, match="class_embed.weight"):
        detr_jax.load_torch_checkpoint(state)


def test_non_finite_values_rejected(tiny_state):
    state = dict(tiny_state)
    state["class_embed.bias"] = np.full_like(state["class_embed.bias"], np.nan)
    with pytest.raises(CheckpointError, match="class_embed.bias holds non-finite"):
        detr_jax.load_torch_checkpoint(state)


def test_safetensors_and_npz_official_layout(tiny_state, tmp_path):
    from safetensors.numpy import save_file
    save_file(tiny_state, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **tiny_state)
    a = detr_jax.load_torch_checkpoint(str(tmp_path / "w.safetensors"))
    b = detr_jax.load_torch_checkpoint(str(tmp_path / "w.npz"))
    np.testing.assert_array_equal(a.class_embed.kernel[...], b.class_embed.kernel[...])


def test_dilation_detected_from_hf_config_or_hub_cache_path(tiny_state, tmp_path):
    from safetensors.numpy import save_file
    from detr_jax.convert.official import detect_dilation
    cache = tmp_path / "models--facebook--detr-resnet-50-dc5" / "snapshots" / "abc"
    cache.mkdir(parents=True)
    save_file(tiny_state, str(cache / "model.safetensors"))
    assert detect_dilation(str(cache / "model.safetensors"))
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(tiny_state, str(plain / "model.safetensors"))
    assert not detect_dilation(str(plain / "model.safetensors"))
    (plain / "config.json").write_text('{"dilation": true, "model_type": "detr"}')
    assert detect_dilation(str(plain / "model.safetensors"))
    assert detect_dilation(str(plain))
