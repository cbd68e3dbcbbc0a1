"""Adaptive Clustering Transformer (ACT) encoder attention (Zheng et al., BMVC 2021).

Per encoder layer and per (image, head) row, queries (and/or keys) are hashed with
multi-round E2LSH; tokens sharing a hash form a cluster whose mean is its prototype.
Prototypes attend to all keys and each query receives its prototype's output. The number
of clusters is data dependent; the work runs at the smallest static capacity of a ladder
that holds the largest count of the batch (``capacity``). ACT adds no parameters: a model
built with it has exactly the variables of the exact model. See docs/act.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import AttentionSpec, EncoderAttention, Stats, count_valid
from detr_jax.attention.capacity import (DEFAULT_LADDER, format_ladder, ladder_capacities, parse_ladder,
                                         run_at_capacity)
from detr_jax.attention.clustering import (broadcast_to_members, cluster_ids, cluster_means,
                                           from_rows, head_broadcast, head_cluster_sums,
                                           row_valid, table_cluster_ids, to_rows)
from detr_jax.attention.costs import layer_clusters
from detr_jax.attention.e2lsh import (MAX_ROUNDS, OFFSET_MODES, combine_rounds, draw_hash_params,
                                      round_hashes)
from detr_jax.attention.softmax import masked_softmax_attention
from detr_jax.attention.stats import LayerStats
from detr_jax.attention.table_kernel import table_numbering

GROUPS = ("Q", "K", "QK")
NUMBERINGS = ("auto", "sort", "table")
# Logit bias of empty key-cluster slots: finite (a row of only empty slots stays finite).
EMPTY_SLOT_BIAS = -1e30


def frozen_array(value) -> Optional[np.ndarray]:
    """A read-only float32 copy of ``value`` (None stays None)."""
    if value is None:
        return None
    array = np.array(value, dtype=np.float32)
    array.setflags(write=False)
    return array


def _field_key(value):
    """Hashable stand-in for a spec field: arrays by shape, dtype and content digest."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, value.dtype.str, hashlib.sha1(value.tobytes()).hexdigest())
    return value


class ArraySpecMixin:
    """Equality and hash over dataclass fields with arrays compared by content, so specs
    holding arrays stay valid static (jit) metadata."""

    def _key(self):
        return (type(self),) + tuple(_field_key(getattr(self, f.name))
                                     for f in dataclasses.fields(self))

    def __eq__(self, other):
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


def layer_key(rng: jax.Array | None, seed: int, layer_index: int) -> jax.Array:
    """The PRNG key of one layer's hash draws: ``rng`` (or ``key(seed)`` when None) folded
    with the layer index, so layers get fresh draws and ``rng=None`` is deterministic."""
    base = jax.random.key(seed) if rng is None else rng
    return jax.random.fold_in(base, layer_index)


def _format_number(x: float) -> str:
    return f"{x:g}"


@dataclasses.dataclass(frozen=True, eq=False)
class ACT(ArraySpecMixin, AttentionSpec):
    """Spec of ACT encoder attention (``act:L=32,r=8``).

    Args:
      rounds: E2LSH rounds ``L`` for queries (1..32; the official code always uses 32).
      bucket_width: ``r``, spacing of the hashing hyperplanes.
      hash_weights: optional (layers, head_dim, rounds) query projections ``a`` per
        encoder layer, shared by heads and images; used as given.
      hash_biases: optional (layers, rounds) offsets ``b``; used as given (not rescaled).
      group: what is clustered: ``"Q"`` queries (the paper's main method), ``"K"`` keys
        and values (softmax weighted by cluster size), ``"QK"`` both.
      key_rounds: E2LSH rounds for keys (groups K and QK); None: ``rounds``.
      seed: seed of the hash draws when the call gets no PRNG key.
      ladder: capacity fractions of N (or a divisor string such as ``"16/8/4/2/1"``); N is
        always added, so no cluster is ever dropped.
      numbering: how equal hashes are found: ``"sort"`` (sort each row by hash; exact),
        ``"table"`` (rounds of hash-table probing, no sort; a cluster is split with
        probability below 1e-9 per layer, see ``clustering.table_cluster_ids``; on GPUs
        one fused kernel, ``table_kernel``) or ``"auto"`` (the default: the module's
        backend decides, ``AttentionBackend.numbering``: the table kernel on ``flash``
        (GPUs), the table in XLA ops on ``xla_map`` (CPUs), the sort elsewhere).
      offsets: the draw of the offsets ``b``: ``"released"`` (the default) ``U[0, 1)`` as
        the released ACT code (which produced the paper's tables) draws them, or
        ``"paper"`` ``U(0, r)`` as the paper's text writes. With offsets in [0, 1) a bucket
        boundary of every round lies near 0, in the bulk of the projected queries when
        ``r`` exceeds their spread, so more rounds split the tokens and there are more
        prototypes than with ``"paper"`` (docs/act.md gives measured ratios).
    Without hash arrays, each layer draws ``a ~ N(0, I)`` and ``b`` (as ``offsets`` says)
    from the call's key (or ``seed``) folded with the layer index.
    """

    name = "act"
    random_draws = True  # hash parameters drawn from the PRNG key (AttentionSpec)
    needs_stats = True
    rounds: int = 32
    bucket_width: float = 8.0
    hash_weights: Any = None
    hash_biases: Any = None
    group: str = "Q"
    key_rounds: Optional[int] = None
    seed: int = 0
    ladder: Any = DEFAULT_LADDER
    numbering: str = "auto"
    offsets: str = "released"

    def __post_init__(self):
        set_field = lambda k, v: object.__setattr__(self, k, v)
        set_field("hash_weights", frozen_array(self.hash_weights))
        set_field("hash_biases", frozen_array(self.hash_biases))
        set_field("group", str(self.group).upper())
        set_field("ladder", parse_ladder(self.ladder))
        set_field("bucket_width", float(self.bucket_width))
        if (self.hash_weights is None) != (self.hash_biases is None):
            raise ValueError("ACT: pass both hash_weights and hash_biases, or neither")
        if self.hash_weights is not None:
            w, b = self.hash_weights, self.hash_biases
            if w.ndim != 3 or b.ndim != 2 or w.shape[0] != b.shape[0] or w.shape[2] != b.shape[1]:
                raise ValueError(f"ACT: hash_weights must be (layers, head_dim, rounds) and "
                                 f"hash_biases (layers, rounds); got {w.shape} and {b.shape}")
            if w.shape[2] != self.rounds:
                set_field("rounds", int(w.shape[2]))
        for label, value in (("rounds", self.rounds), ("key_rounds", self.effective_key_rounds)):
            if not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_ROUNDS:
                raise ValueError(f"ACT: {label} must be an integer in 1..{MAX_ROUNDS}, "
                                 f"got {value!r}")
        if self.numbering not in NUMBERINGS:
            raise ValueError(f"ACT: ids (numbering) must be one of {NUMBERINGS}, "
                             f"got {self.numbering!r}")
        if self.offsets not in OFFSET_MODES:
            raise ValueError(f"ACT: offsets must be one of {OFFSET_MODES}, got {self.offsets!r}")
        if self.group not in GROUPS:
            raise ValueError(f"ACT: group must be one of {GROUPS}, got {self.group!r}")
        if not self.bucket_width > 0:
            raise ValueError(f"ACT: bucket_width must be positive, got {self.bucket_width}")
        if not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"ACT: seed must be an integer, got {self.seed!r}")

    @property
    def effective_key_rounds(self) -> int:
        return self.rounds if self.key_rounds is None else self.key_rounds

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs: nnx.Rngs) -> EncoderAttention:
        if self.hash_weights is not None:
            layers, head_dim, _ = self.hash_weights.shape
            if layer_index >= layers:
                raise ValueError(f"ACT: hash arrays cover {layers} layers, the encoder has "
                                 f"{num_layers}")
            if head_dim != d_model // num_heads:
                raise ValueError(f"ACT: hash_weights head_dim {head_dim} != model head_dim "
                                 f"{d_model // num_heads}")
        return ACTAttention(d_model, num_heads, spec=self, layer_index=layer_index,
                            dtype=dtype, backend=backend, rngs=rngs)

    def layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, tokens: int,
                    valid_tokens: int, stats: Any = None) -> dict:
        """Attention products and hashing/clustering MACs of one ACT layer, per image.

        C prototypes per head attend to all N keys (``2 C N Dh`` per head); E2LSH costs
        ``N Dh L`` per head plus ``N L`` to combine the rounds; the prototype means ``N
        Dh`` additions plus ``C Dh`` divisions. Key clustering (group K/QK) hashes keys and
        averages keys and values alike. ``stats`` gives C (data dependent)."""
        del layer_index, tokens
        heads, head_dim = num_heads, d_model // num_heads
        rounds, key_rounds = self.rounds, self.effective_key_rounds
        clusters, valid = layer_clusters(stats, heads, valid_tokens)
        if self.group == "QK":
            key_clusters, _ = layer_clusters(stats, heads, valid_tokens, "num_key_clusters")
            q_clusters = clusters
        elif self.group == "K":
            q_clusters, key_clusters = None, clusters
        else:
            q_clusters, key_clusters = clusters, None
        n = valid[:, None]  # (B, 1) valid tokens per image
        nq = q_clusters if q_clusters is not None else n          # queries (or prototypes) per head
        nk = key_clusters if key_clusters is not None else n      # keys (or key centroids) per head
        products = np.mean(np.sum(2.0 * nq * nk * head_dim, axis=1))
        hashing = 0.0
        if q_clusters is not None:  # E2LSH of the queries + prototype means
            hashing += np.mean(heads * valid * (head_dim * rounds + rounds)
                               + heads * valid * head_dim + head_dim * q_clusters.sum(axis=1))
        if key_clusters is not None:  # E2LSH of the keys + means of keys and values
            hashing += np.mean(heads * valid * (head_dim * key_rounds + key_rounds)
                               + 2 * (heads * valid * head_dim + head_dim * key_clusters.sum(axis=1)))
        return {"products": float(products), "hashing_and_clustering": float(hashing),
                "mean_clusters": float(np.mean(clusters)),
                "cluster_ratio": float(np.mean(clusters / valid[:, None]))}

    def to_string(self) -> str:
        """``act:L=..,r=..`` plus non-default options. Hash arrays are not representable
        in the string and are left out."""
        parts = [f"L={self.rounds}", f"r={_format_number(self.bucket_width)}"]
        if self.group != "Q":
            parts.append(f"group={self.group}")
        if self.key_rounds is not None:
            parts.append(f"Lk={self.key_rounds}")
        if self.seed != 0:
            parts.append(f"seed={self.seed}")
        if self.ladder != parse_ladder(DEFAULT_LADDER):
            parts.append("ladder=" + format_ladder(self.ladder))
        if self.numbering != "auto":

            parts.append(f"ids={self.numbering}")
        if self.offsets != "released":
            parts.append(f"offsets={self.offsets}")
        return "act:" + ",".join(parts)


class ACTAttention(EncoderAttention):
    """ACT self-attention of one encoder layer (projections inherited, no new variables)."""

    def __init__(self, d_model: int, num_heads: int, *, spec: ACT, layer_index: int = 0,
                 dtype: Any = None, backend: AttentionBackend | None = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                         backend=backend, rngs=rngs)
        self.spec = spec

    def hash_params(self, rng: jax.Array | None, side: str) -> tuple[jax.Array, jax.Array]:
        """E2LSH ``(a (head_dim, rounds), b (rounds,))`` of this layer for ``side`` "Q" or "K"."""
        spec = self.spec
        if side == "Q" and spec.hash_weights is not None:
            return (jnp.asarray(spec.hash_weights[self.layer_index]),
                    jnp.asarray(spec.hash_biases[self.layer_index]))
        rounds = spec.rounds if side == "Q" else spec.effective_key_rounds
        draw = lambda: draw_hash_params(
            jax.random.fold_in(layer_key(rng, spec.seed, self.layer_index), "QK".index(side)),
            self.head_dim, rounds, spec.bucket_width, spec.offsets)
        if rng is None:  # drawn from the seed: constants of the compiled program
            with jax.ensure_compile_time_eval():
                return draw()
        return draw()

    def clusters(self, x: jax.Array, key_padding_mask: jax.Array | None, rng, side: str):
        """Cluster ids (B*H, N), counts (B*H,) and sizes ((B*H, N) or None, see
        ``number``) of per-head vectors x (B, N, H, Dh)."""
        weights, biases = self.hash_params(rng, side)
        with jax.named_scope("act_hash"):
            words = head_hash_words(x, weights, biases, self.spec.bucket_width)
        return self.number(*words, key_padding_mask, heads=x.shape[2])

    def number(self, hi: jax.Array, lo: jax.Array, key_padding_mask: jax.Array | None, *,
               heads: int):
        """Cluster ids (R, N), counts (R,) and sizes of hash words (R = B * heads, N) with
        the spec's numbering (``auto``: the backend's). The table numbering runs as one
        fused kernel on the ``flash`` backend (GPUs) and also returns the clusters' sizes
        (R, N) float32; otherwise sizes are None."""
        rows, n = hi.shape
        numbering = self.spec.numbering
        if numbering == "auto":
            numbering = self.backend.numbering
        with jax.named_scope(f"act_numbering_{numbering}"):
            if numbering == "table" and self.backend.kernel == "flash":
                valid = None if key_padding_mask is None else ~key_padding_mask.astype(bool)
                return table_numbering(hi, lo, valid, heads=heads)
            valid_rows = row_valid(key_padding_mask, rows // heads, heads, n)
            if numbering == "table":
                return (*table_cluster_ids(hi, lo, valid_rows), None)
            return (*cluster_ids(hi, lo, valid_rows), None)

    def attend(self, q, k, v, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        """ACT attention core. q (B, N, H, Dh) scaled, k/v (B, N, H, Dh), key_padding_mask
        (B, N) True on padding or None -> ((B, N, H, Dh), stats)."""
        batch, n, heads, _ = q.shape
        group = self.spec.group
        q_ids = k_ids = None
        counts = []
        clusters = {}
        if "Q" in group:
            q_ids, q_count, q_sizes = self.clusters(q, key_padding_mask, rng, "Q")
            clusters["num_clusters"] = q_count.reshape(batch, heads)
            counts.append(q_count)
        if "K" in group:
            k_ids, k_count, _ = self.clusters(k, key_padding_mask, rng, "K")
            clusters["num_key_clusters" if q_ids is not None else "num_clusters"] = (
                k_count.reshape(batch, heads))
            counts.append(k_count)
        num_valid = count_valid(row_valid(key_padding_mask, batch, 1, n))
        if group == "Q" and self.backend.fused:
            # The fused kernel skips empty prototype slots itself: no capacity switch.
            out, work = fused_prototype_attention(q, k, v, key_padding_mask, q_ids, q_count,
                                                  q_sizes, backend=self.backend)
            return out, LayerStats(num_valid=num_valid, capacity=work, **clusters)
        needed = jnp.max(jnp.stack(counts))
        capacities = ladder_capacities(n, self.spec.ladder)
        # On the XLA path every branch would keep its (rows, capacity, N) probabilities for
        # the backward pass; remat keeps training memory at exact attention's level. A
        # tiled kernel (the TPU kernel, query clusters: no logit bias) stores none.
        out, used = run_at_capacity(
            needed, capacities,
            lambda capacity: clustered_attention(q, k, v, key_padding_mask, q_ids, k_ids, capacity,
                                                 backend=self.backend),
            remat=not (self.backend.fused or (self.backend.tiled and k_ids is None)))
        return out, LayerStats(num_valid=num_valid, capacity=used, **clusters)

    def assignments(self, queries, keys, values, key_padding_mask, rng) -> jax.Array:
        """(B, H, N) int32 cluster ids of the queries (group Q, QK) or keys (group K),
        -1 on padding: the clusters ``attend`` uses for the same inputs and key."""
        q, k, _ = self.project(queries, keys, values)
        side = "Q" if "Q" in self.spec.group else "K"
        ids = self.clusters(q if side == "Q" else k, key_padding_mask, rng, side)[0]
        return ids.reshape(q.shape[0], q.shape[2], q.shape[1])


def head_hash_words(x: jax.Array, weights: jax.Array, biases: jax.Array, bucket_width: float
                    ) -> tuple[jax.Array, jax.Array]:
    """Combined E2LSH hashes of per-head vectors x (B, N, H, Dh) as row words: (hi, lo),
    each (B * H, N) uint32. The fp32 projection writes the row layout directly (x is
    never transposed) and both words come out of one fused array."""
    batch, n, heads, _ = x.shape
    hashes = round_hashes(x, weights, biases, bucket_width, layout="bnhd->bhnl")
    words = jnp.stack(combine_rounds(hashes)).reshape(2, batch * heads, n)
    return words[0], words[1]


def fused_prototype_attention(q, k, v, key_padding_mask, q_ids, q_count, q_sizes=None,
                              block_q: int = 64, *, backend: AttentionBackend
                              ) -> tuple[jax.Array, jax.Array]:
    """Query-clustered attention through the fused kernel with ragged prototype counts.

    Prototypes fill slots 0..count-1 of an N-slot buffer per (image, head); the kernel
    divides each slot's sum by its size (``q_sizes`` (B*H, N) from the numbering, or a
    scatter-add of ones when None) and does work only for query blocks holding
    prototypes. Returns ((B, N, H, Dh), the largest count rounded up to ``block_q``: the
    slots that did work). ``backend``: a fused one (its interpreter flag and key splits).
    """
    batch, n, heads, _ = q.shape
    with jax.named_scope("act_means"):
        sums, sizes = head_cluster_sums(q, q_ids, n, sizes=q_sizes is None)
        sizes = q_sizes.reshape(batch, heads, n) if q_sizes is not None else sizes
    valid = None if key_padding_mask is None else ~key_padding_mask.astype(bool)
    out = backend.flash(sums.astype(q.dtype), k, v, valid, q_count.reshape(batch, heads),
                        sizes, block_q=block_q)
    work = jnp.minimum(-(-jnp.max(q_count) // block_q) * block_q, n).astype(jnp.int32)
    with jax.named_scope("act_broadcast"):
        out = head_broadcast(out, q_ids)
    return out, work


def clustered_attention(q, k, v, key_padding_mask, q_ids, k_ids, capacity: int, *,
                        backend: AttentionBackend | None = None) -> jax.Array:
    """Attention with clustered queries and/or keys at a static cluster capacity.

    Args:
      q: (B, N, H, Dh) scaled queries; k, v: (B, N, H, Dh) keys and values.
      key_padding_mask: (B, N) True on padding, or None.
      q_ids: (B*H, N) query cluster ids (negative: none) or None (queries not clustered).
      k_ids: (B*H, N) key cluster ids or None (keys not clustered).
      capacity: static number of cluster slots, at least every row's cluster count.
      backend: computes the softmax attention (``AttentionBackend.softmax``: its XLA form
        and a training call's dropout); None: ``masked_softmax_attention``.
    Returns:
      (B, N, H, Dh): each query's output is its prototype's attention output; with key
      clusters, the softmax over key centroids is weighted by cluster size (logit +
      log size), empty slots get no weight and padded keys belong to no cluster.
    """
    batch = q.shape[0]
    queries = q
    if q_ids is not None:
        queries = from_rows(cluster_means(to_rows(q), q_ids, capacity)[0], batch)
    keys, values, mask, bias = k, v, key_padding_mask, None
    if k_ids is not None:
        k_means, sizes = cluster_means(to_rows(k), k_ids, capacity)
        v_means, _ = cluster_means(to_rows(v), k_ids, capacity)
        keys, values, mask = from_rows(k_means, batch), from_rows(v_means, batch), None
        log_sizes = jnp.where(sizes > 0, jnp.log(jnp.maximum(sizes, 1).astype(jnp.float32)),
                              EMPTY_SLOT_BIAS)
        bias = log_sizes.reshape(batch, -1, 1, capacity)
    if backend is None:
        out = masked_softmax_attention(queries, keys, values, mask, key_bias=bias)
    else:
        out = backend.softmax(queries, keys, values, mask, key_bias=bias)
    if q_ids is None:
        return out
    return from_rows(broadcast_to_members(to_rows(out), q_ids), batch)


def act_from_string(L=32, r=8.0, group="Q", Lk=None, seed=0, ladder=DEFAULT_LADDER,
                    ids="auto", offsets="released") -> ACT:
    """The spec of ``act:L=..,r=..,...`` (see ``ACT_USAGE``)."""
    try:
        return ACT(rounds=L, bucket_width=r, group=group, key_rounds=Lk, seed=seed,
                   ladder=ladder, numbering=ids, offsets=offsets)
    except ValueError as err:
        raise ValueError(f"{err}; form: {ACT_USAGE}") from None


ACT_USAGE = ("act[:L=<rounds 1..32>,r=<bucket width>,group=Q|K|QK,Lk=<key rounds>,seed=<int>,"
             "ladder=<divisors of N, e.g. 16/8/4/2/1>,ids=auto|sort|table,"
             "offsets=released|paper]")
