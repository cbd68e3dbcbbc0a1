"""K-means clustered attention (Vyas, Katharopoulos and Fleuret, NeurIPS 2020).

Queries of each (image, head) row are hashed to ``bits``-bit codes with random hyperplanes
(``sign(a . q + b)``); a few Lloyd iterations in Hamming space group the codes into ``C``
clusters; the mean query of each cluster attends to all keys and its output is broadcast to
the members. ``C`` is fixed, so the work runs at the static capacity ``C``. Padding tokens
take no part in clustering. No parameters are added (see docs/act.md).

As in the reference implementation (fast-transformers), the hashed queries are the
unscaled projections ``q W_q^T + b_q``: the ``1/sqrt(Dh)`` temperature only enters the
softmax. Differences from the reference: initial centroids are the codes of ``C`` valid
tokens evenly spaced in token order (the reference draws the codes of random tokens), and
an empty cluster keeps its previous centroid, so results are deterministic and
padding-invariant.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.attention.act import ArraySpecMixin, layer_key
from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import AttentionSpec, EncoderAttention, Stats, count_valid
from detr_jax.attention.clustering import (broadcast_to_members, cluster_means, cluster_sums,
                                           from_rows, row_valid, to_rows)
from detr_jax.attention.costs import attention_product_macs
from detr_jax.attention.stats import LayerStats


def hamming_codes(x: jax.Array, planes: jax.Array, offsets: jax.Array) -> jax.Array:
    """Random-hyperplane codes as +-1 floats: (R, N, D) -> (R, N, bits).

    ``planes`` (D, bits), ``offsets`` (bits,); bit j is ``a_j . x + b_j > 0``.
    """
    proj = jnp.einsum("rnd,db->rnb", x.astype(jnp.float32), planes,
                      precision=jax.lax.Precision.HIGHEST) + offsets
    return jnp.where(proj > 0, 1.0, -1.0).astype(jnp.float32)


def initial_centroids(codes: jax.Array, valid: jax.Array, clusters: int) -> jax.Array:
    """Codes of ``clusters`` valid tokens evenly spaced by rank among the valid tokens.

    codes (R, N, bits), valid (R, N) -> (R, clusters, bits). Padding-invariant: the choice
    depends only on the valid tokens in order.
    """
    rank_end = jnp.cumsum(valid.astype(jnp.int32), axis=1)  # valid tokens up to and incl. n
    num_valid = rank_end[:, -1:]
    targets = (jnp.arange(clusters, dtype=jnp.int32)[None] * num_valid) // clusters  # (R, C)
    index = jax.vmap(lambda ends, t: jnp.searchsorted(ends, t + 1, side="left"))(rank_end, targets)
    index = jnp.clip(index, 0, codes.shape[1] - 1)
    return jnp.take_along_axis(codes, index[..., None], axis=1)


def assign(codes: jax.Array, centroids: jax.Array, valid: jax.Array) -> jax.Array:
    """Nearest centroid in Hamming distance (lowest index on ties); -1 on padding.

    codes (R, N, bits), centroids (R, C, bits) as +-1 -> ids (R, N) int32. Distance is
    ``(bits - codes . centroid) / 2``, so the nearest centroid has the largest dot product.
    """
    agreement = jnp.einsum("rnb,rcb->rnc", codes, centroids, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(valid, jnp.argmax(agreement, axis=-1).astype(jnp.int32), -1)


def majority_centroids(codes, ids, previous, clusters: int) -> jax.Array:
    """Bitwise majority of each cluster's codes (ties give bit 0, i.e. -1); an empty cluster
    keeps ``previous``. -> (R, C, bits)."""
    sums, counts = cluster_sums(codes, ids, clusters)  # sums of +-1 = ones - zeros
    majority = jnp.where(sums > 0, 1.0, -1.0)
    return jnp.where(counts[..., None] > 0, majority, previous)


def pack_codes(codes: jax.Array) -> jax.Array:
    """+-1 codes (..., bits) -> (..., ceil(bits / 32)) uint32 words, bit j of word j // 32
    set where code j is +1 (bits past ``bits`` in the last word are 0)."""
    bits = codes.shape[-1]
    words = -(-bits // 32)
    padded = jnp.pad(codes > 0, [(0, 0)] * (codes.ndim - 1) + [(0, words * 32 - bits)])
    shifts = jnp.arange(32, dtype=jnp.uint32)
    planes = padded.reshape(codes.shape[:-1] + (words, 32)).astype(jnp.uint32) << shifts
    return planes.sum(axis=-1, dtype=jnp.uint32)  # disjoint bits: the sum is the OR


def assign_packed(words: jax.Array, centroid_words: jax.Array, valid: jax.Array) -> jax.Array:
    """:func:`assign` on packed codes (:func:`pack_codes`): nearest centroid by the
    population count of XOR (lowest index on ties), -1 on padding. words (R, N, W),
    centroid_words (R, C, W) uint32 -> ids (R, N) int32. The same ids as ``assign`` on the
    unpacked codes, with integer ops instead of a (R, N, C, bits) product."""
    distance = jax.lax.population_count(words[:, :, None, :] ^ centroid_words[:, None, :, :])
    distance = distance.astype(jnp.int32).sum(axis=-1)
    return jnp.where(valid, jnp.argmin(distance, axis=-1).astype(jnp.int32), -1)


def kmeans_ids(codes: jax.Array, valid: jax.Array, clusters: int, iterations: int
               ) -> jax.Array:
    """Lloyd's algorithm in Hamming space: ``iterations`` assignment steps with a centroid
    update between consecutive ones. -> ids (R, N) int32 in [0, clusters), -1 on padding.
    Assignments run on packed codes (:func:`assign_packed`, equal to :func:`assign`)."""
    words = pack_codes(codes)
    centroids = initial_centroids(codes, valid, clusters)

    def step(_, centroids):
        ids = assign_packed(words, pack_codes(centroids), valid)
        return majority_centroids(codes, ids, centroids, clusters)

    centroids = jax.lax.fori_loop(0, max(iterations - 1, 0), step, centroids)
    return assign_packed(words, pack_codes(centroids), valid)


@dataclasses.dataclass(frozen=True, eq=False)
class KMeans(ArraySpecMixin, AttentionSpec):
    """Spec of K-means clustered encoder attention (``kmeans:C=100``).

    Args:
      clusters: ``C``, clusters per (image, head); also the static capacity.
      iterations: Lloyd assignment steps (the reference default is 10).
      bits: hash bits of the Hamming-space codes (reference default 32).
      seed: seed of the hyperplane draws when the call gets no PRNG key.
    Hyperplanes ``a ~ N(0, I)`` and offsets ``b ~ N(0, 1)`` are drawn per layer from the
    call's key (or ``seed``) folded with the layer index, shared by heads and images.
    """

    name = "kmeans"
    random_draws = True  # hash parameters drawn from the PRNG key (AttentionSpec)
    clusters: int = 100
    iterations: int = 10
    bits: int = 32
    seed: int = 0

    def __post_init__(self):
        for label in ("clusters", "iterations", "bits", "seed"):
            value = getattr(self, label)
            if not isinstance(value, (int, np.integer)) or (label != "seed" and value < 1):
                raise ValueError(f"KMeans: {label} must be a positive integer, got {value!r}")

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs: nnx.Rngs) -> EncoderAttention:
        del num_layers
        return KMeansAttention(d_model, num_heads, spec=self, layer_index=layer_index,
                               dtype=dtype, backend=backend, rngs=rngs)

    def layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, tokens: int,
                    valid_tokens: int, stats: Any = None) -> dict:
        """MACs of one layer per image: ``bits`` hyperplane projections (``N Dh bits`` per
        head), Lloyd iterations in Hamming space (``N C bits`` per assignment step plus
        ``N bits`` per centroid update), prototype means (``N Dh + C Dh``) and the
        prototype attention (``2 C N Dh`` per head). C is fixed: no stats needed."""
        del layer_index, tokens, stats
        heads, head_dim, n = num_heads, d_model // num_heads, valid_tokens
        clusters, iterations, bits = self.clusters, self.iterations, self.bits
        hashing = heads * n * head_dim * bits                          # hyperplane projections
        lloyd = heads * (iterations * n * clusters * bits              # Hamming assignments
                         + max(iterations - 1, 0) * n * bits)          # majority centroid updates
        means = heads * (n * head_dim + clusters * head_dim)           # prototype means
        return {"products": attention_product_macs(clusters, n, d_model),
                "hashing_and_clustering": float(hashing + lloyd + means),
                "mean_clusters": float(clusters), "cluster_ratio": clusters / max(n, 1)}

    def to_string(self) -> str:
        parts = [f"C={self.clusters}", f"iterations={self.iterations}", f"bits={self.bits}"]
        if self.seed != 0:
            parts.append(f"seed={self.seed}")
        return "kmeans:" + ",".join(parts)


class KMeansAttention(EncoderAttention):
    """K-means clustered self-attention of one encoder layer (no new variables)."""

    def __init__(self, d_model: int, num_heads: int, *, spec: KMeans, layer_index: int = 0,
                 dtype: Any = None, backend: AttentionBackend | None = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                         backend=backend, rngs=rngs)
        self.spec = spec

    def hash_params(self, rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """Hyperplanes (head_dim, bits) and offsets (bits,) of this layer."""
        key_a, key_b = jax.random.split(layer_key(rng, self.spec.seed, self.layer_index))
        planes = jax.random.normal(key_a, (self.head_dim, self.spec.bits), jnp.float32)
        return planes, jax.random.normal(key_b, (self.spec.bits,), jnp.float32)

    def attend(self, q, k, v, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        """q (B, N, H, Dh) scaled, k/v (B, N, H, Dh), mask (B, N) -> ((B, N, H, Dh), stats)."""
        batch, n, heads, _ = q.shape
        clusters = self.spec.clusters
        valid = row_valid(key_padding_mask, batch, heads, n)
        q_rows = to_rows(q)
        ids = self.cluster_ids(q_rows, valid, rng)
        prototypes, sizes = cluster_means(q_rows, ids, clusters)
        out = self.backend.attention(from_rows(prototypes, batch), k, v, key_padding_mask)
        out = from_rows(broadcast_to_members(to_rows(out), ids), batch)
        stats = LayerStats(
            num_clusters=(sizes > 0).sum(axis=-1, dtype=jnp.int32).reshape(batch, heads),
            num_valid=count_valid(valid.reshape(batch, heads, n)[:, 0]),
            capacity=jnp.asarray(clusters, jnp.int32))
        return out, stats

    def cluster_ids(self, q_rows: jax.Array, valid: jax.Array, rng) -> jax.Array:
        """K-means ids (R, N) (-1 on padding) of per-row queries (R = B * H, N, Dh) scaled
        by ``Dh ** -0.5`` as ``attend`` receives them; the codes hash the unscaled queries
        (the reference's choice: the temperature belongs to the softmax only)."""
        unscaled = q_rows.astype(jnp.float32) / jnp.float32(self.head_dim ** -0.5)
        return kmeans_ids(hamming_codes(unscaled, *self.hash_params(rng)), valid,
                          self.spec.clusters, self.spec.iterations)

    def assignments(self, queries, keys, values, key_padding_mask, rng) -> jax.Array:
        """(B, H, N) int32 query clusters (-1 on padding), as ``attend`` forms them."""
        q, _, _ = self.project(queries, keys, values)
        batch, n, heads, _ = q.shape
        ids = self.cluster_ids(to_rows(q), row_valid(key_padding_mask, batch, heads, n), rng)
        return ids.reshape(batch, heads, n)


def kmeans_from_string(C=100, iterations=10, bits=32, seed=0) -> KMeans:
    """The spec of ``kmeans:C=..,...`` (see ``KMEANS_USAGE``)."""
    try:
        return KMeans(clusters=C, iterations=iterations, bits=bits, seed=seed)
    except ValueError as err:
        raise ValueError(f"{err}; form: {KMEANS_USAGE}") from None


KMEANS_USAGE = "kmeans[:C=<clusters>,iterations=<Lloyd steps>,bits=<hash bits>,seed=<int>]"
