"""Official Anchor DETR checkpoints: detection from keys, key mapping, architecture
inference and clear errors (tiny models; the full-size parity is in tests/models)."""

import numpy as np
import pytest

from detr_jax.convert import CheckpointError
from detr_jax.convert.anchor import (SPEC_PATH, anchor_detr_from_state, anchor_dilation,
                                     anchor_recipe_state_dict, build_anchor_detr,
                                     expected_anchor_shapes, is_anchor_detr, load_anchor_detr)
from detr_jax.convert.recipe import load_spec, recipe_tensor
from detr_jax.models.anchor_detr import tiny_anchor_detr_config


def official_keys():
    return list(anchor_recipe_state_dict())


@pytest.fixture(scope="module")
def tiny_state():
    """Recipe weights in the official layout for the tiny Anchor DETR."""
    shapes = expected_anchor_shapes(build_anchor_detr(tiny_anchor_detr_config(), abstract=True))
    return {name: recipe_tensor(name, shape, index, 1)
            for index, (name, shape) in enumerate(sorted(shapes.items()))}


def test_full_model_expects_exactly_the_official_keys_and_shapes():
    spec, _ = load_spec(SPEC_PATH)
    model = build_anchor_detr(tiny_anchor_detr_config(
        backbone=dict(stages=(3, 4, 6, 3), width=64, dilation=True), hidden_dim=256,
        num_heads=8, enc_layers=6, dec_layers=6, ffn_dim=1024, input_proj_groups=32,
        num_query_position=300, num_query_pattern=3, num_classes=91, num_select=100),
        abstract=True)
    assert expected_anchor_shapes(model) == dict(spec)


def test_detected_from_keys():
    assert is_anchor_detr(official_keys())
    detr_spec, _ = load_spec()
    assert not is_anchor_detr(name for name, _ in detr_spec)


def test_packed_projections_and_shared_heads_are_placed(tiny_state):
    model = anchor_detr_from_state(tiny_state, "tiny")
    d = 32
    packed = tiny_state["transformer.encoder_layers.1.self_attn.in_proj_weight"]
    attn = model.transformer.encoder_layers[1].self_attn
    for slot, name in enumerate(("q_row_proj", "q_col_proj", "k_row_proj", "k_col_proj", "v_proj")):
        np.testing.assert_array_equal(getattr(attn, name).kernel[...],
                                      packed[slot * d:(slot + 1) * d].T)
    bias = tiny_state["transformer.decoder_layers.0.cross_attn.in_proj_bias"]
    np.testing.assert_array_equal(model.transformer.decoder_layers[0].cross_attn.v_proj.bias[...],
                                  bias[4 * d:])
    packed = tiny_state["transformer.decoder_layers.1.self_attn.in_proj_weight"]
    np.testing.assert_array_equal(model.transformer.decoder_layers[1].self_attn.v_proj.kernel[...],
                                  packed[2 * d:].T)
    # the shared heads come from the last decoder layer's copy, as torch's load_state_dict
    # leaves them; the recipe's copies differ, so this choice is what the parity test checks
    last = tiny_state["transformer.class_embed.1.weight"]
    assert not np.array_equal(last, tiny_state["transformer.class_embed.0.weight"])
    np.testing.assert_array_equal(model.transformer.class_embed.kernel[...], last.T)
    np.testing.assert_array_equal(model.transformer.bbox_embed.layers[2].bias[...],
                                  tiny_state["transformer.bbox_embed.1.layers.2.bias"])
    np.testing.assert_array_equal(model.transformer.adapt_pos1d.linear2.kernel[...],
                                  tiny_state["transformer.adapt_pos1d.2.weight"].T)
    np.testing.assert_array_equal(model.input_proj.norm.scale[...],
                                  tiny_state["input_proj.0.1.weight"])
    np.testing.assert_array_equal(model.transformer.position.embedding[...],
                                  tiny_state["transformer.position.weight"])
    conv = tiny_state["backbone.body.layer2.0.conv2.weight"]
    np.testing.assert_array_equal(model.backbone.layer2[0].conv2.kernel[...],
                                  conv.transpose(2, 3, 1, 0))


def test_architecture_read_from_shapes(tiny_state):
    model = anchor_detr_from_state(tiny_state, "AnchorDETR_tiny_c5.pth")
    cfg = model.config
    assert cfg["detector"] == "anchor_detr"
    assert (cfg["hidden_dim"], cfg["enc_layers"], cfg["dec_layers"], cfg["ffn_dim"]) == (32, 2, 2, 64)
    assert (cfg["num_query_position"], cfg["num_query_pattern"], cfg["num_classes"]) == (6, 2, 5)
    assert tuple(cfg["backbone"]["stages"]) == (1, 1, 1, 1)
    assert cfg["backbone"]["dilation"] is False
    assert model.num_queries == 12


def test_dilation_from_file_name():
    assert anchor_dilation("/ckpt/AnchorDETR_r50_dc5.pth")
    assert not anchor_dilation("/ckpt/AnchorDETR_r101_c5.pth")
    assert anchor_dilation("<state dict>")  # the official default is DC5


def test_recipe_draws_anchor_points_and_patterns():
    state = anchor_recipe_state_dict()
    points = state["transformer.position.weight"]
    assert points.shape == (300, 2) and points.min() >= 0 and points.max() < 1
    assert 0.8 < state["transformer.pattern.weight"].std() < 1.2


def test_missing_key_is_named(tiny_state, tmp_path):
    torch = pytest.importorskip("torch")
    state = dict(tiny_state)
    del state["transformer.decoder_layers.1.cross_attn.in_proj_bias"]
    path = tmp_path / "anchor_missing.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError, match=r"anchor_missing\.pth.*missing keys: "
                                              r"transformer\.decoder_layers\.1\.cross_attn\.in_proj_bias"):
        load_anchor_detr(str(path))


def test_standard_attention_variant_read_from_shapes():
    cfg = tiny_anchor_detr_config(attention_type="nn.MultiheadAttention")
    shapes = expected_anchor_shapes(build_anchor_detr(cfg, abstract=True))
    assert shapes["transformer.encoder_layers.0.self_attn.in_proj_weight"] == (96, 32)
    assert shapes["transformer.decoder_layers.1.cross_attn.in_proj_bias"] == (96,)
    state = {name: recipe_tensor(name, shape, index, 1)
             for index, (name, shape) in enumerate(sorted(shapes.items()))}
    model = anchor_detr_from_state(state, "std", encoder_attention="act:L=8")
    assert model.config["attention_type"] == "nn.MultiheadAttention"
    assert model.config["encoder_attention"].startswith("act")
    packed = state["transformer.encoder_layers.1.self_attn.in_proj_weight"]
    np.testing.assert_array_equal(model.transformer.encoder_layers[1].self_attn.v_proj.kernel[...],
                                  packed[64:].T)
    assert len(model.encoder_attention_layers()) == 2


def test_unsupported_variants_are_refused(tiny_state):
    levels = dict(tiny_state, **{"transformer.level_embed.weight": np.zeros((3, 32), np.float32)})
    with pytest.raises(CheckpointError, match="several feature levels"):
        anchor_detr_from_state(levels, "levels")
    odd = dict(tiny_state)
    odd["transformer.decoder_layers.0.cross_attn.in_proj_weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(CheckpointError, match="cannot tell the attention type"):
        anchor_detr_from_state(odd, "odd")
    with pytest.raises(ValueError, match="RCDA encoder supports exact and ENACT attention only"):
        anchor_detr_from_state(tiny_state, "rcda", encoder_attention="act:L=8")
    wrong = dict(tiny_state)
    wrong["transformer.decoder_layers.0.ffn.linear1.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(CheckpointError, match=r"ffn\.linear1\.weight: \(3, 3\)"):
        anchor_detr_from_state(wrong, "wrong")
