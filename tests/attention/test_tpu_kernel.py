"""The Pallas TPU flash-attention path (run by the TPU interpreter) against the XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import detr_jax
from detr_jax.attention.backend import AttentionBackend, resolve_backend
from detr_jax.attention.softmax import masked_softmax_attention
from detr_jax.attention.tpu_flash import block_size, padded_length, tpu_flash_attention
from detr_jax.models.build import build_model
from detr_jax.models.config import tiny_model_config
from tests.attention.clustered_cases import build_attention, padded_case, relative_error


def inputs(seed=0, batch=2, nq=40, nk=40, heads=2, dim=32):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, nq, heads, dim)) * 0.3, jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(batch, nk, heads, dim)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(np.arange(nk)[None] >= np.array([[nk], [nk * 2 // 3]]))  # image 1 padded
    return q, k, v, mask


def test_padded_lengths_and_blocks():
    assert [padded_length(n) for n in (1, 128, 129, 768)] == [128, 128, 256, 768]
    assert [block_size(n) for n in (128, 256, 384, 768, 1024)] == [128, 256, 128, 256, 512]


def test_forward_and_gradients_match_the_reference():
    q, k, v, mask = inputs()
    kernel = lambda q, k, v: tpu_flash_attention(q, k, v, mask, interpret=True)
    reference = lambda q, k, v: masked_softmax_attention(q, k, v, mask)
    out, kernel_vjp = jax.vjp(kernel, q, k, v)
    ref, reference_vjp = jax.vjp(reference, q, k, v)
    assert out.shape == ref.shape
    assert relative_error(np.asarray(out), np.asarray(ref)) < 1e-5
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=out.shape), jnp.float32)
    grads = kernel_vjp(cotangent)
    for grad, ref_grad in zip(grads, reference_vjp(cotangent)):
        assert relative_error(np.asarray(grad), np.asarray(ref_grad)) < 1e-5
    # padded keys get no gradient
    assert float(jnp.abs(grads[1][1, 26:]).max()) == 0.0


def test_cross_attention_lengths_and_several_key_blocks():
    """Fewer queries than keys (the decoder's cross-attention), keys over three blocks, no
    padding mask (the length padding alone is masked)."""
    q, k, v, _ = inputs(seed=1, nq=10, nk=300, dim=16)
    out = tpu_flash_attention(q, k, v, None, interpret=True)
    ref = masked_softmax_attention(q, k, v, None)
    assert relative_error(np.asarray(out), np.asarray(ref)) < 1e-5


def test_backend_routes_and_resolution():
    with pytest.raises(ValueError, match="needs a TPU"):
        resolve_backend("tpu_flash")
    backend = resolve_backend("tpu_flash_interpret")
    assert backend == AttentionBackend("tpu_flash_interpret")
    assert backend.tiled and not backend.fused and backend.numbering == "sort"
    assert not backend.with_dropout(0.1, jax.random.key(0)).tiled  # dropout: XLA
    q, k, v, mask = inputs(nq=12, nk=20, dim=8)
    ref = masked_softmax_attention(q, k, v, mask)
    assert relative_error(np.asarray(backend.attention(q, k, v, mask)), np.asarray(ref)) < 1e-5
    bias = jnp.zeros((2, 2, 1, 20))  # a logit bias takes the XLA ops
    np.testing.assert_array_equal(backend.softmax(q, k, v, mask, key_bias=bias),
                                  masked_softmax_attention(q, k, v, mask, key_bias=bias))


def test_act_query_clusters_attend_through_the_kernel():
    q, k, v, mask, _ = padded_case()
    args = [jnp.asarray(x) for x in (q, k, v, mask)] + [jax.random.key(4)]
    spec = detr_jax.ACT(rounds=16, bucket_width=0.5, ladder="1")
    xla_out, _ = build_attention(spec, backend="xla").attend(*args)
    out, _ = build_attention(spec, backend="tpu_flash_interpret").attend(*args)
    valid = ~mask
    assert relative_error(np.asarray(out)[valid], np.asarray(xla_out)[valid]) < 1e-5


def random_weights(model, seed=0):
    """Numpy-drawn weights for every variable of ``model`` (built abstract): no per-shape
    initializer compiles. Running variances are positive."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    values = []
    for path, leaf in leaves:
        if "running_var" in jax.tree_util.keystr(path):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = rng.normal(0.0, 0.2, leaf.shape)
        values.append(jnp.asarray(value, leaf.dtype))
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, values))
    return model


def test_tiny_model_forward_matches_the_default_backend():
    pixels = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
    mask = jnp.zeros((2, 64, 96), bool).at[1, :, 64:].set(True)
    forward = nnx.jit(lambda model, pixels, mask: model(pixels, mask))
    outputs = []
    for backend in ("auto", "tpu_flash_interpret"):
        cfg = tiny_model_config(attention_backend=backend)
        outputs.append(forward(random_weights(build_model(cfg, abstract=True)), pixels, mask))
    ref, out = outputs
    assert np.all(np.isfinite(ref["pred_boxes"]))
    assert not np.allclose(ref["pred_boxes"][0], ref["pred_boxes"][1])
    for name in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)
