"""The attention backend: chosen in the model config, resolved when the model is built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.attention import MultiHeadAttention
from detr_jax.attention.backend import AttentionBackend, resolve_backend
from detr_jax.attention.softmax import cudnn_attention, masked_softmax_attention
from detr_jax.models.build import build_model
from detr_jax.models.config import tiny_model_config
from detr_jax.models.transformer import encoder_layer_keys


def attention_modules(model):
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, MultiHeadAttention)]


def test_model_config_fields_reach_every_attention_module():
    default = build_model(tiny_model_config(encoder_attention="act:L=4"), abstract=True)
    assert {m.backend for m in attention_modules(default)} == {AttentionBackend("xla_map")}  # CPU
    cfg = tiny_model_config(attention_backend="flash_interpret", attention_key_splits=2)
    model = build_model(cfg, abstract=True)
    modules = attention_modules(model)
    assert len(modules) == 2 + 2 * 2  # encoder self-attention, decoder self and cross
    assert {m.backend for m in modules} == {AttentionBackend("flash_interpret", 2)}
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        build_model(tiny_model_config(attention_backend="cudnn"), abstract=True)


def test_backend_fields_are_checked():
    with pytest.raises(ValueError, match="resolve 'auto'"):
        AttentionBackend("auto")
    with pytest.raises(ValueError, match="key_splits"):
        AttentionBackend("xla", key_splits=0)
    assert resolve_backend("xla", "3").key_splits == 3
    assert AttentionBackend("flash").numbering == "table"
    assert AttentionBackend("flash_interpret").numbering == "sort"


def test_cudnn_path_takes_xla_for_float32():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 8)) for i in range(3))
    mask = jnp.zeros((2, 5), bool).at[1, 3:].set(True)
    np.testing.assert_array_equal(cudnn_attention(q, k, v, mask),
                                  masked_softmax_attention(q, k, v, mask))


def test_encoder_layer_keys():
    rng = jax.random.key(3)
    attn, drop = encoder_layer_keys(rng, 2)
    expected = jax.random.split(jax.random.fold_in(rng, 2))
    assert jnp.array_equal(jax.random.key_data(attn), jax.random.key_data(expected[0]))
    assert jnp.array_equal(jax.random.key_data(drop), jax.random.key_data(expected[1]))
    assert encoder_layer_keys(None, 0) == (None, None)
