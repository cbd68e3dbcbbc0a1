"""Row-column decoupled attention (RCDA), Anchor DETR's replacement for N x N attention.

A query attends to the W columns of the feature map through a "row" softmax and to its H
rows through a "column" softmax; the two weightings multiply:

    out[q] = sum_{y, x} softmax_x(q_row . k_row[x]) * softmax_y(q_col . k_col[y]) * v[y, x]

with ``k_row`` the projected row keys averaged over the H rows (one key per column x) and
``k_col`` the projected column keys averaged over the W columns (one key per row y). Per
head the cost is O(Q (H + W) + Q H W) instead of O(Q H W) logits plus softmax over H W.

Official layout: ``in_proj_weight`` (5d, d) packs the q-row, q-col, k-row, k-col and value
projections in that order (``in_proj_bias`` alike); the converter splits it into
``q_row_proj``, ``q_col_proj``, ``k_row_proj``, ``k_col_proj`` and ``v_proj``.

Subtleties of the official computation kept here:
- The key averages include padded rows/columns (the mean runs over the whole padded map);
  only the logits are masked. Columns are masked by the first row of the padding mask and
  rows by its first column (bottom/right padding).
- The official code projects and then averages; averaging first is the same affine map
  (``mean(x) W + b``) and saves projecting every token twice; the two differ by float
  rounding only.
- The weighted sum contracts the shorter side of the map first (the official
  ``efficient_compute``); both orders give the same result up to rounding.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

RCDA_PROJECTIONS = ("q_row_proj", "q_col_proj", "k_row_proj", "k_col_proj", "v_proj")


class RowColumnAttention(nnx.Module):
    """Multi-head RCDA (the official ``MultiheadRCDA`` with its default arguments).

    ``dropout`` applies to both softmax weightings when a key is given (the official
    models use 0).
    """

    def __init__(self, d_model: int, num_heads: int, *, dropout: float = 0.0,
                 dtype: Any = None, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        xavier = nnx.initializers.xavier_uniform()
        for name in RCDA_PROJECTIONS:
            setattr(self, name, nnx.Linear(d_model, d_model, dtype=dtype, kernel_init=xavier,
                                           rngs=rngs))
        self.out_proj = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def _drop(self, weights: jax.Array, rng: jax.Array | None) -> jax.Array:
        if rng is None or self.dropout == 0.0:
            return weights
        keep = jax.random.bernoulli(rng, 1.0 - self.dropout, weights.shape)
        return jnp.where(keep, weights / (1.0 - self.dropout), 0.0).astype(weights.dtype)

    def weights(self, query_row, query_col, key_row, key_col, key_padding_mask=None):
        """Softmax weightings: query_row/query_col (B, Q, d), key_row/key_col (B, H, W, d),
        key_padding_mask (B, H, W) bool True on padding or None ->
        row weights (B, heads, Q, W) and column weights (B, heads, Q, H)."""
        scale = self.head_dim ** -0.5
        q_row = self._heads(self.q_row_proj(query_row)) * scale          # (B, Q, n, Dh)
        q_col = self._heads(self.q_col_proj(query_col)) * scale
        k_row = self._heads(self.k_row_proj(key_row.mean(axis=1)))       # (B, W, n, Dh)
        k_col = self._heads(self.k_col_proj(key_col.mean(axis=2)))       # (B, H, n, Dh)
        logits_row = jnp.einsum("bqnd,bwnd->bnqw", q_row, k_row)
        logits_col = jnp.einsum("bqnd,bhnd->bnqh", q_col, k_col)
        if key_padding_mask is not None:
            mask_row = key_padding_mask[:, None, None, 0, :]                # (B, 1, 1, W)
            mask_col = key_padding_mask[:, None, None, :, 0]                # (B, 1, 1, H)
            logits_row = jnp.where(mask_row, -jnp.inf, logits_row)
            logits_col = jnp.where(mask_col, -jnp.inf, logits_col)
        return jax.nn.softmax(logits_row, axis=-1), jax.nn.softmax(logits_col, axis=-1)

    def __call__(self, query_row, query_col, key_row, key_col, value, key_padding_mask=None,
                 rng=None) -> jax.Array:
        """query_row, query_col (B, Q, d); key_row, key_col, value (B, H, W, d);
        key_padding_mask (B, H, W) bool or None; rng: dropout key or None -> (B, Q, d)."""
        w_row, w_col = self.weights(query_row, query_col, key_row, key_col, key_padding_mask)
        if rng is not None:
            rng_row, rng_col = jax.random.split(rng)
            w_row, w_col = self._drop(w_row, rng_row), self._drop(w_col, rng_col)
        v = self._heads(self.v_proj(value)).astype(w_row.dtype)             # (B, H, W, n, Dh)
        height, width = value.shape[1], value.shape[2]
        if height < width:
            per_row = jnp.einsum("bnqw,bhwnd->bnqhd", w_row, v)
            out = jnp.einsum("bnqh,bnqhd->bqnd", w_col, per_row)
        else:
            per_col = jnp.einsum("bnqh,bhwnd->bnqwd", w_col, v)
            out = jnp.einsum("bnqw,bnqwd->bqnd", w_row, per_col)
        out = out.reshape(*out.shape[:-2], self.d_model)
        return self.out_proj(out)

    def self_attention(self, row, col, src, mask=None, rng=None):
        """Encoder self-attention: row = src + posemb_row, col = src + posemb_col, src
        (B, h, w, d); mask (B, h, w) or None -> ((B, h*w, d), None): every pixel queries
        with its row and column features (the encoder-side call of the official code)."""
        flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
        return self(flat(row), flat(col), row, col, src, mask, rng), None
