"""Shared inputs for the clustered-attention tests: padded batches and their unpadded parts."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def build_attention(spec, heads=2, head_dim=8, layer_index=0, backend=None):
    """One encoder-attention module of ``spec`` (random projections; tests call ``attend``);
    ``backend``: an AttentionBackend or a backend name (None: the platform's default)."""
    if isinstance(backend, str):
        from detr_jax.attention.backend import resolve_backend
        backend = resolve_backend(backend)
    return spec.build(heads * head_dim, heads, layer_index=layer_index, num_layers=6,
                      backend=backend, rngs=nnx.Rngs(0))


def grid_valid(sizes, height, width):
    """(B, height*width) bool: image i covers rows < h_i and columns < w_i (row-major)."""
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    return np.stack([((rows < h) & (cols < w)).reshape(-1) for h, w in sizes])


def discrete_tokens(rng, n, heads, head_dim, distinct, scale=1.0):
    """(n, heads, head_dim) tokens drawn from ``distinct`` random vectors per head."""
    centers = rng.normal(0.0, scale, (distinct, heads, head_dim))
    return centers[rng.integers(0, distinct, n)].astype(np.float32)


def padded_case(seed=0, sizes=((5, 6), (4, 3)), heads=2, head_dim=8, distinct=(6, 3)):
    """A padded batch of clustered-looking tokens with garbage in the padding.

    Returns (q, k, v, mask, parts): q/k/v (B, N, H, Dh) float32, mask (B, N) True on padding,
    and parts = [(q_i, k_i, v_i)] with each image's valid tokens only (N_i, in order).
    """
    rng = np.random.default_rng(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    n = height * width
    valid = grid_valid(sizes, height, width)
    shape = (len(sizes), n, heads, head_dim)
    # Padding: large random values that would form many clusters if they were hashed.
    q, k, v = (rng.normal(0.0, 5.0, shape).astype(np.float32) for _ in range(3))
    parts = []
    for i, (h, w) in enumerate(sizes):
        count = h * w
        qi = discrete_tokens(rng, count, heads, head_dim, distinct[i])
        ki = discrete_tokens(rng, count, heads, head_dim, distinct[i], scale=2.0)
        vi = rng.normal(0.0, 1.0, (count, heads, head_dim)).astype(np.float32)
        q[i, valid[i]], k[i, valid[i]], v[i, valid[i]] = qi, ki, vi
        parts.append((qi, ki, vi))
    return q, k, v, ~valid, parts


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def exact_attention(q, k, v, mask=None):
    from detr_jax.attention import masked_softmax_attention
    return masked_softmax_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                    None if mask is None else jnp.asarray(mask))


def key(seed=0):
    return jax.random.key(seed)


def gradient_scratch_bytes(setting, backend, tokens=512, d_model=64, heads=4) -> int:
    """Scratch (XLA temp) bytes of the jitted gradient of one encoder-attention layer of
    ``setting`` on a (2, tokens, d_model) input with ``backend``: its training memory."""
    from detr_jax.attention.registry import parse_attention

    layer = parse_attention(setting).build(d_model, heads, layer_index=0, num_layers=6,
                                           backend=backend, rngs=nnx.Rngs(0))
    graph, state = nnx.split(layer)
    x = jax.random.normal(jax.random.key(0), (2, tokens, d_model))

    def loss(state, x):
        out, _ = nnx.merge(graph, state)(x, x, x, None, rng=jax.random.key(1))
        return jnp.sum(out ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return grad.lower(state, x).compile().memory_analysis().temp_size_in_bytes
