"""ENACT for Anchor DETR's row-column decoupled attention (RCDA) in the encoder.

The released Anchor-DETR-ENACT computation (``variant="released"``), per encoder layer with
its own entropy layer (a d -> 1 linear layer, checkpoint key ``ENACT.W_prob``):

1. The row keys ``src + posemb_row``, the column keys ``src + posemb_col`` and the values
   ``src`` of the h*w pixels are flattened row-major. The entropy comes from the row keys
   alone and is chunked exactly as the released DETR-ENACT
   (:func:`detr_jax.attention.enact.cluster_tokens`): ``p = softmax(Linear(row keys)) +
   1e-8`` over all pixels, ``-p log2 p``, Gaussian smoothing with ``6 sigma - 1`` taps, the
   step of the second derivative, one chunk size for the batch (the mean run length),
   centre crop, and M fixed chunks.
2. Row keys, column keys and values are pooled per chunk with the softmax of the smoothed
   entropy inside the chunk (before their projections), giving M pooled tokens.
3. The roles of RCDA are turned around: the M pooled tokens are the keys, and the pixels'
   row and column features, averaged as in RCDA, are the queries. The pooled row keys go
   through the checkpoint's q-row projection (slot 0 of ``in_proj_weight``), the pooled
   column keys through q-col (slot 1), and both are scaled by ``head_dim ** -0.5``; the row
   features averaged over the h rows go through k-row (slot 2) and give one query per
   column x, the column features averaged over the w columns go through k-col (slot 3)
   and give one per row y; the pooled values go through slot 4.
4. Pixel (y, x) receives ``sum_m softmax_m(q_col[y] . k_col[m]) * softmax_m(q_row[x] .
   k_row[m]) * v[m]``: the product of two softmaxes over the same M tokens, not
   renormalized (its weights sum to less than 1), then the output projection.
5. The key padding mask is ignored (commented out in the release): padded pixels enter the
   entropy softmax, the chunks and the averages.
6. For a batch of more than one image the release reads the (B, h, w, d) output of its
   encoder attention as if it were (h, B, w, d) (a ``transpose(0, 1)`` meant for the
   sequence-first layout of the original RCDA), so image b's row y receives the output of
   the row ``(b h + y) // B`` of image ``(b h + y) mod B``. Reproduced, to match the
   released models on batches; a batch of one is unaffected.

``variant="paper"`` is the padding-correct form: the paper's variable-length regions over
the valid pixels of each image (natural-log entropy over the valid pixels only, ``6 sigma
+ 1`` taps, one region per run of equal step value; see :mod:`detr_jax.attention.enact`),
each image on its own (no batch-wide chunk size), empty region slots masked out of both
softmaxes, the row and column queries averaged over valid rows and columns only, and no
batch mixing. A padded image then gives the same output on its valid pixels as the image
alone.

The number of pooled tokens is data dependent; attention runs at the smallest capacity of
the spec's ladder that holds the batch's largest count (no recompilation per value).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.attention.base import count_valid
from detr_jax.attention.capacity import ladder_capacities, run_at_capacity
from detr_jax.attention.enact import cluster_tokens, pool_regions, region_weights
from detr_jax.attention.stats import LayerStats
from detr_jax.models.rcda import RowColumnAttention


class RowColumnENACT(RowColumnAttention):
    """ENACT RCDA self-attention of one Anchor DETR encoder layer (module docstring).

    Same projections as :class:`RowColumnAttention` (an RCDA checkpoint's ``in_proj_weight``
    loads unchanged) plus ``entropy`` (d -> 1, float32)."""

    def __init__(self, d_model: int, num_heads: int, *, spec, layer_index: int = 0,
                 dropout: float = 0.0, dtype: Any = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
        self.spec = spec
        self.layer_index = layer_index
        self.entropy = nnx.Linear(d_model, 1, kernel_init=nnx.initializers.xavier_uniform(),
                                  bias_init=nnx.initializers.zeros_init(), dtype=jnp.float32,
                                  rngs=rngs)

    def _queries(self, row, col, mask):
        """Per-head pixel queries: row features averaged over rows -> (B, w, n, Dh), column
        features averaged over columns -> (B, h, n, Dh); over valid rows/columns only
        unless the variant ignores padding."""
        if self.spec.variant == "released" or mask is None:
            mean_row, mean_col = row.mean(axis=1), col.mean(axis=2)
        else:
            valid_rows = (~mask[:, :, 0]).astype(row.dtype)[:, :, None, None]   # (B, h, 1, 1)
            valid_cols = (~mask[:, 0, :]).astype(col.dtype)[:, None, :, None]   # (B, 1, w, 1)
            mean_row = (row * valid_rows).sum(axis=1) / jnp.maximum(valid_rows.sum(axis=1), 1)
            mean_col = (col * valid_cols).sum(axis=2) / jnp.maximum(valid_cols.sum(axis=2), 1)
        return self._heads(self.k_row_proj(mean_row)), self._heads(self.k_col_proj(mean_col))

    def self_attention(self, row, col, src, mask=None, rng=None):
        """row = src + posemb_row, col = src + posemb_col, src: (B, h, w, d); mask (B, h, w)
        True on padding or None; rng: dropout key or None -> ((B, h*w, d), LayerStats)."""
        batch, h, w, d = src.shape
        n = h * w
        flat = lambda x: x.reshape(batch, n, d)
        mask_flat = None if mask is None else mask.reshape(batch, n)
        order, ids, counts, smoothed = cluster_tokens(self.spec, self.entropy, flat(row),
                                                      mask_flat)
        gather = lambda x: jnp.take_along_axis(flat(x), order[..., None], axis=1)
        row_sorted, col_sorted, src_sorted = gather(row), gather(col), gather(src)
        q_row, q_col = self._queries(row, col, None if mask is None else mask.astype(bool))
        scale = self.head_dim ** -0.5
        rng_row, rng_col = (None, None) if rng is None else tuple(jax.random.split(rng))

        def branch(capacity: int):
            weights = region_weights(smoothed, ids, capacity)
            pool = lambda x: pool_regions(x, ids, weights, capacity)
            k_row = self._heads(self.q_row_proj(pool(row_sorted))) * scale   # (B, M, n, Dh)
            k_col = self._heads(self.q_col_proj(pool(col_sorted))) * scale
            v = self._heads(self.v_proj(pool(src_sorted)))
            empty = (jnp.arange(capacity)[None, :] >= counts[:, None])[:, None, None, :]
            logits_row = jnp.where(empty, -jnp.inf, jnp.einsum("bxnd,bmnd->bnxm", q_row, k_row))
            logits_col = jnp.where(empty, -jnp.inf, jnp.einsum("bynd,bmnd->bnym", q_col, k_col))
            w_row = self._drop(jax.nn.softmax(logits_row, axis=-1), rng_row)
            w_col = self._drop(jax.nn.softmax(logits_col, axis=-1), rng_col)
            # (y, x) <- sum_m w_col[y, m] w_row[x, m] v[m]
            return jnp.einsum("bnym,bnxm,bmnd->byxnd", w_col, w_row, v.astype(w_row.dtype))

        # remat: differentiating the capacity switch would keep every rung's (rows, M)
        # softmax weights for the backward pass (more than RCDA's own); rematerialized,
        # training keeps only the branch inputs and recomputes the chosen rung
        out, used = run_at_capacity(jnp.max(counts), ladder_capacities(n, self.spec.ladder),
                                    branch, remat=True)
        if self.spec.variant == "released" and batch > 1:
            # the release's transpose(0, 1) + reshape of its (B, h, w, d) output
            out = jnp.swapaxes(out, 0, 1).reshape(out.shape)
        out = self.out_proj(out.reshape(batch, n, d))
        valid = (jnp.ones((batch, n), bool) if mask is None else ~mask_flat.astype(bool))
        stats = LayerStats(num_valid=count_valid(valid),
                           num_clusters=jnp.broadcast_to(counts[:, None], (batch, self.num_heads)),
                           capacity=used)
        return out, stats
