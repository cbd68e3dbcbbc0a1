"""Initialization of the attention projections as the official packed in-projection."""

import numpy as np
from flax import nnx

from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import MultiHeadAttention


def test_qkv_kernels_follow_the_packed_xavier_bound():
    d = 256
    attn = MultiHeadAttention(d, 8, backend=AttentionBackend("xla"), rngs=nnx.Rngs(0))
    bound = np.sqrt(6.0 / (d + 3 * d))                # xavier over the (768, 256) matrix
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        w = np.asarray(proj.kernel[...])
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.99 * bound            # 65536 draws reach the edge
        np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)
        assert np.all(np.asarray(proj.bias[...]) == 0)
    # the output projection is its own (256, 256) matrix: the unpacked bound
    out = np.asarray(attn.out_proj.kernel[...])
    np.testing.assert_allclose(out.std(), np.sqrt(6.0 / (2 * d)) / np.sqrt(3), rtol=0.02)
    # the three blocks are independent draws
    assert not np.allclose(attn.q_proj.kernel[...], attn.k_proj.kernel[...])
