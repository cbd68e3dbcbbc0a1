"""ENACT: entropy-based clustering of keys and values (Savathrakis et al.), trainable.

Per encoder layer, with its own parameters (a linear layer d -> 1):

1. ``p = softmax(Linear(keys))`` over the image's valid pixels (keys = src + pos), and the
   self-information ``I = -p log(p + 1e-8)``.
2. The valid pixels, in row-major order, form one 1-D signal (padding is taken out, so a
   padded image gives the signal of the image alone); it is smoothed with a Gaussian of
   ``sigma`` (taps at integer offsets -3 sigma..3 sigma, weight ``exp(-x^2 / 2 sigma^2) /
   (sqrt(2 pi) sigma)``, zero beyond the ends).
3. The second derivative ``[-1, 2, -1]`` of the smoothed signal goes through a step
   function (1 where positive) with a straight-through gradient.
4. Regions are the maximal runs of equal step value; inside each region the smoothed
   information gets a softmax, and each region's key and value are the weighted sums of
   its members' keys and values.
5. Queries stay full: every token attends to the region keys (standard scaled
   dot-product attention, empty region slots masked), so the output keeps every token.

The number of regions varies per image and layer; no region is ever dropped. With the
fused kernel (GPUs) the work runs at the smallest static capacity of the ACT capacity
ladder that holds the batch's largest count. On the XLA path (CPU, TPU) attention loops
over key blocks of the smallest rung's size up to the largest count (``blocked.py``):
work follows the count and memory holds one tile of logits, forward and backward. Keys
and values are clustered before their projections (the weights of a region sum to 1, so
this equals clustering the projected keys and values) so that only the region keys are
projected.

``variant="released"`` reproduces the released DETR-ENACT module (``ClustAttn``) exactly,
so that the released checkpoints run as trained (see docs/enact.md):

- ``p = softmax(Linear(keys)) + 1e-8`` over all N pixels and ``I = -p log2 p``;
- Gaussian taps at offsets ``-(3 sigma - 1)..3 sigma - 1`` (``6 sigma - 1`` taps), the
  same weights, zero padding; the second derivative and the step as above;
- one chunk size for the whole batch: the mean over images of each image's mean region
  length (``N / regions``), rounded half to even; the sequence is centre-cropped to a
  multiple of it and cut into fixed chunks whose keys and values are the sums weighted by
  the softmax of the smoothed information inside the chunk;
- attention ``softmax(q k^T) v / head_dim``: the logits are not scaled by
  ``1/sqrt(head_dim)``, the softmax output is divided by ``head_dim``;
- the key padding mask is ignored: padded pixels enter the entropy softmax, the chunks
  and the attention, as in the released code (its fixtures and checkpoints were made and
  evaluated without padding, batch size 1 or equal sizes).
The number of chunks (``N // chunk``) is data dependent; it runs on the same capacity
ladder as the regions, no recompilation per value.

Gradients reach the entropy layer through the region weights; region membership itself
is discrete (the straight-through step keeps the released code's form).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detr_jax.attention.backend import AttentionBackend
from detr_jax.attention.base import AttentionSpec, EncoderAttention, Stats, count_valid
from detr_jax.attention.capacity import DEFAULT_LADDER, format_ladder, ladder_capacities, parse_ladder, run_at_capacity
from detr_jax.attention.blocked import key_block_attention
from detr_jax.attention.costs import (attention_product_macs, exact_layer_flops, layer_clusters,
                                      linear_macs)
from detr_jax.attention.exact import ExactAttention
from detr_jax.attention.stats import LayerStats

VARIANTS = ("paper", "released")


def valid_pixels(key_padding_mask: jax.Array | None, batch: int, n: int) -> jax.Array:
    """(B, N) bool, True on valid pixels, from a padding mask (True on padding) or None."""
    if key_padding_mask is None:
        return jnp.ones((batch, n), bool)
    return ~key_padding_mask.astype(bool)


def gaussian_taps(sigma: float) -> np.ndarray:
    """The smoothing kernel of step 2: offsets -3 sigma..3 sigma (integers)."""
    half = int(math.floor(3 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    return (np.exp(-x ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)).astype(np.float32)


def released_taps(sigma: float) -> np.ndarray:
    """The released code's smoothing kernel: offsets ``-(3 sigma - 1)..3 sigma - 1``
    (``6 sigma - 1`` taps), weights ``exp(-x^2 / 2 sigma^2) / (sqrt(2 pi) sigma)``.
    ``3 sigma`` must be an integer (the kernel is then symmetric with odd length)."""
    half = 3 * sigma - 1
    if not float(3 * sigma).is_integer() or half < 0:
        raise ValueError(f"ENACT variant=released needs 3*sigma to be a positive integer, "
                         f"got sigma={sigma}")
    x = np.arange(-int(half), int(half) + 1, dtype=np.float32)
    sigma32 = np.float32(sigma)
    coeff = np.float32(1.0) / (sigma32 * np.sqrt(np.float32(2 * math.pi)))
    return (coeff * np.exp(-x ** 2 / (np.float32(2) * sigma32 ** 2))).astype(np.float32)


def conv1d_same(signal: jax.Array, taps: np.ndarray) -> jax.Array:
    """(B, N) signal convolved with symmetric ``taps`` (odd length), zero beyond the ends."""
    half = len(taps) // 2
    padded = jnp.pad(signal, ((0, 0), (half, half)))
    n = signal.shape[1]
    return sum(float(t) * padded[:, i:i + n] for i, t in enumerate(taps))


def step_straight_through(x: jax.Array) -> jax.Array:
    """1.0 where ``x > 0`` else 0.0, with the identity as gradient."""
    return x + jax.lax.stop_gradient((x > 0).astype(x.dtype) - x)


def self_information(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """``-p log(p + 1e-8)`` with ``p`` the softmax of (B, N) logits over valid pixels (0 elsewhere)."""
    logits = jnp.where(valid, logits.astype(jnp.float32), -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)
    return jnp.where(valid, -p * jnp.log(p + 1e-8), 0.0)


def released_information(logits: jax.Array) -> jax.Array:
    """The released code's self-information ``-p log2 p`` with ``p = softmax(logits) + 1e-8``
    over all N pixels of (B, N) logits (no padding mask)."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) + 1e-8
    return -p * jnp.log(p) / jnp.log(jnp.float32(2.0))


def regions(information: jax.Array, valid: jax.Array, sigma: float,
            taps: np.ndarray | None = None):
    """Regions of step 2-4 over a compacted signal.

    Args:
      information: (B, N) self-information with the valid pixels first (``valid`` a prefix).
      valid: (B, N) bool prefix mask.
      sigma: Gaussian standard deviation.
      taps: the smoothing kernel; None: ``gaussian_taps(sigma)``.
    Returns:
      ids (B, N) int32 region of each pixel (-1 on padding), counts (B,) int32 regions,
      smoothed (B, N) the smoothed information (0 on padding).
    """
    taps = gaussian_taps(sigma) if taps is None else taps
    smoothed = jnp.where(valid, conv1d_same(information, taps), 0.0)
    second = conv1d_same(smoothed, np.array([-1.0, 2.0, -1.0], np.float32))
    step = step_straight_through(second)
    change = jnp.concatenate([jnp.ones_like(step[:, :1], bool), step[:, 1:] != step[:, :-1]], axis=1)
    starts = change & valid
    ids = jnp.where(valid, jnp.cumsum(starts.astype(jnp.int32), axis=1) - 1, -1)
    return ids, starts.sum(axis=1, dtype=jnp.int32), smoothed


def region_weights(smoothed: jax.Array, ids: jax.Array, capacity: int) -> jax.Array:
    """Softmax of ``smoothed`` inside each region: (B, N) weights, 0 where ids < 0."""
    batch, n = ids.shape
    inside = (ids >= 0) & (ids < capacity)
    flat = jnp.where(inside, jnp.arange(batch)[:, None] * capacity + ids, batch * capacity).reshape(-1)
    # The smoothed self-information lies in [0, 1), so exp needs no max subtraction.
    e = jnp.where(inside.reshape(-1), jnp.exp(smoothed.reshape(-1)), 0.0)
    total = jax.ops.segment_sum(e, flat, num_segments=batch * capacity + 1)
    return (e / jnp.maximum(total[flat], 1e-30)).reshape(batch, n)


def pool_regions(x: jax.Array, ids: jax.Array, weights: jax.Array, capacity: int) -> jax.Array:
    """(B, N, D) -> (B, capacity, D): weighted sum of each region's members (0 for empty slots)."""
    batch, n, d = x.shape
    inside = (ids >= 0) & (ids < capacity)
    flat = jnp.where(inside, jnp.arange(batch)[:, None] * capacity + ids, batch * capacity).reshape(-1)
    weighted = (x.astype(jnp.float32) * weights[..., None]).reshape(batch * n, d)
    pooled = jax.ops.segment_sum(weighted, flat, num_segments=batch * capacity + 1)
    return pooled[:-1].reshape(batch, capacity, d).astype(x.dtype)


def released_chunks(counts: jax.Array, n: int):
    """The released code's chunking: (ids (B, N), counts (B,)) from the mean region length.

    ``counts`` (B,) are the region counts of :func:`regions` on the uncompacted signal.
    Each image's mean region length is ``N / counts`` (float32, as the release's mean of
    the run lengths); the chunk size is the mean of these over the batch, rounded half to
    even (Python's ``round``, as the release). The sequence is centre-cropped to a multiple
    of it (``(N mod chunk) // 2`` pixels dropped at the start, the rest at the end) and cut
    into fixed chunks, the same for every image.
    """
    batch = counts.shape[0]
    mean_lengths = jnp.float32(n) / jnp.maximum(counts, 1).astype(jnp.float32)
    chunk = jnp.clip(jnp.round(jnp.mean(mean_lengths)).astype(jnp.int32), 1, n)
    num_chunks = n // chunk
    start = (n - num_chunks * chunk) // 2
    position = jnp.arange(n, dtype=jnp.int32)
    inside = (position >= start) & (position < start + num_chunks * chunk)
    ids = jnp.where(inside, (position - start) // chunk, -1)
    return jnp.broadcast_to(ids, (batch, n)), jnp.full((batch,), num_chunks, jnp.int32)


def cluster_tokens(spec: "ENACT", entropy, keys: jax.Array, key_padding_mask: jax.Array | None):
    """Steps 1-4 for (B, N, d) ``keys`` under ``spec``, with ``entropy`` the layer's
    d -> 1 linear layer: (order (B, N) pixel order, ids (B, N), counts (B,), smoothed
    information (B, N)), all in ``order``'s order (valid pixels first, row-major; the
    identity for ``variant="released"``, which ignores padding). ``ids`` < 0 marks pixels
    in no region (padding, or the cropped ends of the released chunks)."""
    batch, n, _ = keys.shape
    valid = valid_pixels(key_padding_mask, batch, n)
    if spec.variant == "released":  # padding ignored, as in the released code
        valid = jnp.ones((batch, n), bool)
    # Valid pixels first, in row-major order (a stable sort of the padding flag).
    order = jnp.argsort(~valid, axis=1, stable=True)
    prefix = jnp.take_along_axis(valid, order, axis=1)
    logits = entropy(jnp.take_along_axis(keys, order[..., None], axis=1))[..., 0]
    if spec.variant == "released":
        info = released_information(logits)
        _, runs, smoothed = regions(info, prefix, spec.sigma, released_taps(spec.sigma))
        ids, counts = released_chunks(runs, n)
        return order, ids, counts, smoothed
    info = self_information(logits, prefix)
    ids, counts, smoothed = regions(info, prefix, spec.sigma)
    return order, ids, counts, smoothed


@dataclasses.dataclass(frozen=True)
class ENACT(AttentionSpec):
    """Spec of ENACT encoder attention (``enact:sigma=3``).

    Args:
      sigma: standard deviation of the Gaussian smoothing (3 for DETR in the paper).
      variant: ``"paper"`` (the default, for training: variable-length regions, padding
        excluded) or ``"released"`` (the released DETR-ENACT code exactly: fixed chunks of
        the mean region length, entropy in log base 2, ``6 sigma - 1`` smoothing taps,
        unscaled logits with the softmax output divided by ``head_dim``, and the key
        padding mask ignored: padded pixels are clustered and attended to as in the
        release, so use it on unpadded batches (batch size 1 or equal image sizes) to get
        the released numbers; see the module docstring).
      ladder: capacity fractions of N (see ``capacity.parse_ladder``).
      layers: the encoder layers (0-based) that use ENACT, as a tuple or a string such
        as ``"3/4/5"``; the others use exact attention (and have no entropy layer).
        None: every layer.
    """

    name = "enact"
    needs_stats = True
    sigma: float = 3.0
    variant: str = "paper"
    ladder: Any = DEFAULT_LADDER
    layers: Any = None

    def __post_init__(self):
        object.__setattr__(self, "sigma", float(self.sigma))
        object.__setattr__(self, "ladder", parse_ladder(self.ladder))
        if not self.sigma > 0:
            raise ValueError(f"ENACT: sigma must be positive, got {self.sigma}")
        if self.variant not in VARIANTS:
            raise ValueError(f"ENACT: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "released":
            released_taps(self.sigma)  # validates sigma
        if self.layers is not None:
            object.__setattr__(self, "layers", parse_layers(self.layers))

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs: nnx.Rngs) -> EncoderAttention:
        self._check_layers(num_layers)
        if self.layers is not None:
            if layer_index not in self.layers:
                return AllKeysAttention(d_model, num_heads, layer_index=layer_index,
                                        dtype=dtype, backend=backend, rngs=rngs)
        return ENACTAttention(d_model, num_heads, spec=self, layer_index=layer_index,
                              dtype=dtype, backend=backend, rngs=rngs)

    def build_rcda(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
                   dropout: float = 0.0, dtype: Any = None, rngs: nnx.Rngs):
        """ENACT RCDA of an Anchor DETR encoder layer
        (:class:`detr_jax.models.rcda_enact.RowColumnENACT`: the released
        Anchor-DETR-ENACT computation with ``variant="released"``, the padding-correct
        regions with ``"paper"``); layers left out by ``layers=`` get plain RCDA."""
        from detr_jax.models.rcda import RowColumnAttention
        from detr_jax.models.rcda_enact import RowColumnENACT
        self._check_layers(num_layers)
        if self.layers is not None and layer_index not in self.layers:
            return RowColumnAttention(d_model, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
        return RowColumnENACT(d_model, num_heads, spec=self, layer_index=layer_index,
                              dropout=dropout, dtype=dtype, rngs=rngs)

    def rcda_layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, h: int,
                         w: int, valid_h: int, valid_w: int, stats: Any = None) -> dict:
        """MACs per image of one ENACT RCDA layer with M pooled tokens per image (the
        model's ``num_clusters``): the entropy layer (d -> 1) on every pixel, smoothing
        and second derivative, pooling of row keys, column keys and values (``3 N d``);
        projections of the M pooled row keys, column keys and values, of the w + h
        averaged queries and the output on every pixel; logits ``(h + w) M d`` and the
        weighted sum ``h w M d`` (valid rows and columns). Layers left out by ``layers=``
        count as plain RCDA."""
        if self.layers is not None and layer_index not in self.layers:
            return super().rcda_layer_flops(layer_index, d_model=d_model, num_heads=num_heads,
                                            h=h, w=w, valid_h=valid_h, valid_w=valid_w)
        d, n, valid = d_model, h * w, valid_h * valid_w
        regions, _ = layer_clusters(stats, num_heads, valid)
        m = np.mean(regions, axis=1)  # (B,) pooled tokens per image
        taps = len(released_taps(self.sigma) if self.variant == "released"
                   else gaussian_taps(self.sigma))
        seen = n if self.variant == "released" else valid  # the release ignores padding
        clustering = linear_macs(n, d, 1) + seen * (taps + 3) + 3 * seen * d
        projections = (3 * m * d * (d + 1) + linear_macs(h + w, d, d) + linear_macs(n, d, d))
        products = m * d * (valid_h + valid_w + valid_h * valid_w)
        return {"projections": float(np.mean(projections)), "products": float(np.mean(products)),
                "hashing_and_clustering": float(clustering), "mean_clusters": float(np.mean(m)),
                "cluster_ratio": float(np.mean(m / valid))}

    def _check_layers(self, num_layers: int) -> None:
        if self.layers is not None:
            beyond = [i for i in self.layers if i >= num_layers]
            if beyond:
                raise ValueError(f"ENACT: layers {beyond} do not exist in a "
                                 f"{num_layers}-layer encoder")

    def layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, tokens: int,
                    valid_tokens: int, stats: Any = None) -> dict:
        """Projections, attention products and clustering MACs of one layer, per image.

        R regions per image (the model's ``num_clusters``): the entropy layer (d -> 1) runs
        on every token, the Gaussian smoothing (``len(taps)`` MACs) and the second
        derivative (3) on the valid ones, pooling is ``2 N d`` (keys and values, weighted
        sums), k/v are projected on the R pooled vectors, every query attends to R keys
        (``2 N R d``). Layers the spec leaves out (``layers=``) count as exact attention."""
        d = d_model
        if self.layers is not None and layer_index not in self.layers:
            return exact_layer_flops(d, valid_tokens)
        regions, valid = layer_clusters(stats, num_heads, valid_tokens)
        r = np.mean(regions, axis=1)  # (B,) regions per image (every head shares them)
        taps = len(gaussian_taps(self.sigma))
        clustering = np.mean(linear_macs(tokens, d, 1) + valid * (taps + 3) + 2 * valid * d)
        projections = np.mean(2 * linear_macs(tokens, d, d) + 2 * r * d * (d + 1))
        return {"projections": float(projections),
                "products": float(np.mean(attention_product_macs(valid, r, d))),
                "hashing_and_clustering": float(clustering), "mean_clusters": float(np.mean(r)),
                "cluster_ratio": float(np.mean(r / valid))}

    def to_string(self) -> str:
        parts = [f"sigma={self.sigma:g}"]
        if self.variant != "paper":
            parts.append(f"variant={self.variant}")
        if self.ladder != parse_ladder(DEFAULT_LADDER):
            parts.append("ladder=" + format_ladder(self.ladder))
        if self.layers is not None:
            parts.append("layers=" + "/".join(str(i) for i in self.layers))
        return "enact:" + ",".join(parts)


class AllKeysAttention(ExactAttention):
    """Exact attention in a layer that an ENACT spec leaves out (``layers=``): its stats
    count every valid key as its own region, so statistics and FLOPs cover all layers."""

    def attend(self, q, k, v, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        out, _ = super().attend(q, k, v, key_padding_mask, rng)
        batch, n, heads, _ = q.shape
        valid = count_valid(valid_pixels(key_padding_mask, batch, n))
        return out, LayerStats(num_valid=valid,
                               num_clusters=jnp.broadcast_to(valid[:, None], (batch, heads)))


def parse_layers(value: Any) -> tuple[int, ...]:
    """Layer indices from ``"3/4/5"``, a single integer or a sequence: sorted, unique, >= 0."""
    try:
        if isinstance(value, str):
            layers = [int(part) for part in value.split("/") if part.strip()]
        elif isinstance(value, (int, np.integer)):
            layers = [int(value)]
        else:
            layers = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"ENACT: layers {value!r}: expected layer indices such as 3/4/5") from None
    if not layers or min(layers) < 0:
        raise ValueError(f"ENACT: layers {value!r}: expected at least one index >= 0")
    return tuple(sorted(set(layers)))


class ENACTAttention(EncoderAttention):
    """ENACT self-attention of one encoder layer: projections plus the entropy layer.

    Keys and values are pooled into regions before their projections, so ``project``
    projects only the queries and ``attend`` receives the (B, N, d) keys and values."""

    def __init__(self, d_model: int, num_heads: int, *, spec: ENACT, layer_index: int = 0,
                 dtype: Any = None, backend: AttentionBackend | None = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, layer_index=layer_index, dtype=dtype,
                         backend=backend, rngs=rngs)
        self.spec = spec
        self.entropy = nnx.Linear(d_model, 1, kernel_init=nnx.initializers.xavier_uniform(),
                                  bias_init=nnx.initializers.zeros_init(), dtype=jnp.float32,
                                  rngs=rngs)

    def cluster(self, keys: jax.Array, key_padding_mask: jax.Array | None):
        """Regions of one call (:func:`cluster_tokens` with this layer's entropy layer)."""
        return cluster_tokens(self.spec, self.entropy, keys, key_padding_mask)

    def project(self, queries, keys, values):
        """Per-head queries (B, N, H, Dh), scaled by ``Dh ** -0.5`` except for
        ``variant="released"`` (unscaled logits there); keys and values (B, N, d)
        unprojected (``attend`` projects the pooled regions)."""
        q = self.split_heads(self.q_proj(queries))
        if self.spec.variant != "released":
            q = q * (self.head_dim ** -0.5)
        return q, keys, values

    def attend(self, q, keys, values, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        """q (B, N, H, Dh) from ``project``; keys, values (B, N, d) before projection; mask (B, N)
        True on padding -> ((B, N, H, Dh), stats)."""
        del rng
        batch, n, _ = keys.shape
        order, ids, counts, smoothed = self.cluster(keys, key_padding_mask)
        gather = lambda x: jnp.take_along_axis(x, order[..., None], axis=1)
        keys_sorted, values_sorted = gather(keys), gather(values)

        def region_keys_values(capacity: int):
            """Per-head keys and values of the regions in ``capacity`` slots."""
            weights = region_weights(smoothed, ids, capacity)
            k = self.split_heads(self.k_proj(pool_regions(keys_sorted, ids, weights, capacity)))
            v = self.split_heads(self.v_proj(pool_regions(values_sorted, ids, weights, capacity)))
            return k, v

        def branch(capacity: int):
            k, v = region_keys_values(capacity)
            empty = jnp.arange(capacity)[None, :] >= counts[:, None]
            return self.backend.attention(q, k, v, empty)

        capacities = ladder_capacities(n, self.spec.ladder)
        if not self.backend.fused:
            # No switch without the fused kernel: its branches would each hold their own
            # temporaries (twice exact attention's training memory). All N slots are
            # pooled and projected; attention reads only the used key blocks, one tile
            # of the smallest rung's size at a time, forward and backward, training
            # dropout included (each tile's mask is redrawn in the backward pass).
            block = capacities[0]
            k, v = region_keys_values(n)
            needed = jnp.max(counts)
            out = key_block_attention(q, k, v, jnp.arange(n)[None, :] < counts[:, None],
                                      needed, block=block,
                                      dropout_rate=self.backend.dropout_rate,
                                      dropout_rng=self.backend.dropout_rng)
            used = jnp.minimum((needed + block - 1) // block * block, n).astype(jnp.int32)
        else:
            out, used = run_at_capacity(jnp.max(counts), capacities, branch)
        if self.spec.variant == "released":  # the release divides the softmax by head_dim
            out = out / self.head_dim
        valid = valid_pixels(key_padding_mask, batch, n)
        stats = LayerStats(num_clusters=jnp.broadcast_to(counts[:, None], (batch, self.num_heads)),
                           num_valid=count_valid(valid), capacity=used)
        return out, stats

    def assignments(self, queries, keys, values, key_padding_mask, rng) -> jax.Array:
        """(B, H, N) int32 region of each token in token order (-1 on padding and, for
        ``variant="released"``, on the cropped ends); every head shares the regions."""
        del queries, values, rng
        batch, n, _ = keys.shape
        order, ids, _, _ = self.cluster(keys, key_padding_mask)
        rows = jnp.arange(batch)[:, None]
        in_token_order = jnp.full((batch, n), -1, jnp.int32).at[rows, order].set(ids)
        return jnp.broadcast_to(in_token_order[:, None, :], (batch, self.num_heads, n))


def enact_from_string(sigma=3.0, variant="paper", ladder=DEFAULT_LADDER, layers=None) -> ENACT:
    """The spec of ``enact:sigma=..,...`` (see ``ENACT_USAGE``)."""
    return ENACT(sigma=sigma, variant=variant, ladder=ladder, layers=layers)


ENACT_USAGE = ("enact[:sigma=<gaussian sigma>,variant=paper|released,ladder=<divisors>,"
               "layers=<0-based layer indices, e.g. 3/4/5>]")
