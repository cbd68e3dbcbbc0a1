"""The encoder-attention interface and the plain multi-head attention it builds on.

Every encoder self-attention variant (exact, ACT, K-means, ENACT) is an
:class:`EncoderAttention`: an ``nnx.Module`` owning the q/k/v/out projections of one
encoder layer and called as::

    output, stats = attention(queries, keys, values, key_padding_mask, rng)

with ``queries``/``keys`` = ``src + pos`` and ``values`` = ``src`` of shape (B, N, d),
``key_padding_mask`` bool (B, N), True on padding (the official convention), and an
optional PRNG key. ``output`` is (B, N, d); ``stats`` is a :class:`~detr_jax.attention.stats.LayerStats`
describing the layer (for example the number of prototypes per image and head), or None
for exact attention. ``__call__`` is the same for every variant: :meth:`MultiHeadAttention.project`,
then :meth:`MultiHeadAttention.attend` (the part variants replace), then the output
projection. A variant that projects keys and values after reducing them (ENACT) does so
in ``attend`` and overrides ``project`` to pass them through. Variants share the
projection parameters, so a checkpoint converted once runs with any of them.

A variant also describes itself: :meth:`EncoderAttention.assignments` gives the tokens'
cluster ids (cluster-map plots) and :meth:`AttentionSpec.layer_flops` its
multiply-accumulates (``detr_jax.flops``).

A variant is chosen through an :class:`AttentionSpec`, a small immutable description
(``Exact()``, ``ACT(rounds=32)``, ...) whose :meth:`AttentionSpec.build` creates the
module of one encoder layer. The softmax kernel is an
:class:`~detr_jax.attention.backend.AttentionBackend` given when the module is built.
The model never names a variant.

Attention dropout (training, the official ``nn.MultiheadAttention`` dropout): a module
with ``attention_dropout > 0`` called with a ``dropout_rng`` runs ``attend`` with
``self.backend`` replaced by ``backend.with_dropout(rate, key)`` (XLA kernel; see
``detr_jax.attention.backend``), so every ``self.backend.attention`` call of a variant
drops its softmax probabilities; a variant that needs a logit bias calls
``self.backend.softmax`` (XLA ops), which drops them as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.attention.backend import AttentionBackend, resolve_backend
from detr_jax.attention.costs import exact_layer_flops
from detr_jax.attention.stats import LayerStats

Stats = LayerStats | None


def packed_xavier_uniform(parts: int = 3):
    """Xavier-uniform of one block of a packed in-projection: the official
    ``nn.MultiheadAttention`` packs q, k, v into one (parts * d_out, d_in) matrix and
    ``xavier_uniform_`` bounds it by ``sqrt(6 / (d_in + parts * d_out))``; each block
    here, (d_in, d_out), gets that bound (``sqrt(6 / (256 + 768))`` at d = 256, not the
    1.41x larger ``sqrt(6 / 512)`` of its own shape)."""
    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = shape[-2], shape[-1]
        bound = (6.0 / (fan_in + parts * fan_out)) ** 0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def count_valid(valid: jax.Array) -> jax.Array:
    """Valid tokens per image for the statistics: (B, N) bool -> (B,) int32.

    The count reads a materialized copy of the mask (``optimization_barrier``). Otherwise
    XLA fuses this small reduction with the position-embedding fusion that reads the same
    padding mask, and runs that whole fusion as a reduction kernel: 0.19 ms per forward
    pass of DETR-DC5 at batch 1 on an H100.
    """
    return jax.lax.optimization_barrier(valid).sum(axis=-1, dtype=jnp.int32)


class MultiHeadAttention(nnx.Module):
    """Multi-head attention with separate q/k/v/out projections (torch ``nn.MultiheadAttention``).

    The official checkpoints pack q, k, v in ``in_proj_weight`` rows [0:d], [d:2d],
    [2d:3d]; the converter splits them into ``q_proj``, ``k_proj``, ``v_proj``.
    ``attention_dropout``: the rate at which a training call (``dropout_rng`` given)
    drops the attention probabilities (module docstring); the model sets it from its
    config after building the module.
    """

    def __init__(self, d_model: int, num_heads: int, *, dtype: Any = None,
                 backend: AttentionBackend | None = None, attention_dropout: float = 0.0,
                 rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.backend = resolve_backend() if backend is None else backend
        self.attention_dropout = float(attention_dropout)
        # Xavier-uniform weights, zero biases: the official transformer's initialization,
        # q/k/v bounded as the packed (3d, d) in-projection they are in the official code.
        linear = lambda init: nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs,
                                         kernel_init=init)
        self.q_proj = linear(packed_xavier_uniform(3))
        self.k_proj = linear(packed_xavier_uniform(3))
        self.v_proj = linear(packed_xavier_uniform(3))
        self.out_proj = linear(nnx.initializers.xavier_uniform())

    def split_heads(self, x: jax.Array) -> jax.Array:
        """(B, N, d) -> (B, N, H, Dh)."""
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def project(self, queries, keys, values):
        """Per-head projections; queries come back scaled by ``Dh ** -0.5``."""
        q = self.split_heads(self.q_proj(queries)) * (self.head_dim ** -0.5)
        k = self.split_heads(self.k_proj(keys))
        v = self.split_heads(self.v_proj(values))
        return q, k, v

    def attend(self, q, k, v, key_padding_mask, rng) -> tuple[jax.Array, Stats]:
        """Per-head attention core: (B, N, H, Dh) tensors in, (B, Nq, H, Dh) out plus stats.

        Variants override this; the default is exact softmax attention with the module's
        backend (no statistics).
        """
        del rng
        return self.backend.attention(q, k, v, key_padding_mask), None

    def __call__(self, queries, keys, values, key_padding_mask=None, rng=None, *,
                 dropout_rng=None):
        """(B, Nq, d) queries, (B, Nk, d) keys and values, (B, Nk) bool padding mask ->
        ((B, Nq, d), stats). ``rng``: the variant's key (hash draws); ``dropout_rng``:
        attention dropout at ``self.attention_dropout`` (training; None: no dropout)."""
        q, k, v = self.project(queries, keys, values)
        built = self.backend
        self.backend = built.with_dropout(self.attention_dropout, dropout_rng)
        try:
            out, stats = self.attend(q, k, v, key_padding_mask, rng)
        finally:
            self.backend = built
        out = out.reshape(*out.shape[:-2], self.d_model)
        return self.out_proj(out), stats


class EncoderAttention(MultiHeadAttention):
    """Base class of every encoder self-attention variant (see the module docstring)."""

    def __init__(self, d_model: int, num_heads: int, *, layer_index: int = 0,
                 dtype: Any = None, backend: AttentionBackend | None = None, rngs: nnx.Rngs):
        super().__init__(d_model, num_heads, dtype=dtype, backend=backend, rngs=rngs)
        self.layer_index = layer_index

    def assignments(self, queries: jax.Array, keys: jax.Array, values: jax.Array,
                    key_padding_mask: jax.Array | None, rng: jax.Array | None
                    ) -> jax.Array | None:
        """Each token's cluster in this layer for the same inputs as ``__call__``:
        (B, H, N) int32 ids (-1 on padding), the clusters the layer attends with; None
        for variants that do not cluster (the default)."""
        del queries, keys, values, key_padding_mask, rng
        return None


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Immutable description of an encoder-attention variant; builds one module per layer."""

    name: ClassVar[str] = "abstract"
    # Whether ``layer_flops`` needs the model's statistics (data-dependent cluster counts).
    needs_stats: ClassVar[bool] = False
    # Whether the variant draws random parameters from its PRNG key (ACT's and K-means'
    # hashes): its results are one sample of a distribution, so evaluation can repeat it
    # with several keys (``eval.hash_seeds``). A deterministic variant ignores the key.
    random_draws: ClassVar[bool] = False

    def build(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
              dtype: Any = None, backend: AttentionBackend | None = None,
              rngs: nnx.Rngs) -> EncoderAttention:
        """The module of encoder layer ``layer_index`` (of ``num_layers``); ``backend``
        None: ``resolve_backend()`` (the platform's default)."""
        raise NotImplementedError

    def layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, tokens: int,
                    valid_tokens: int, stats: Any = None) -> dict:
        """Multiply-accumulates per image of one encoder layer's attention (see
        ``detr_jax.flops``): ``products`` (attention matrix products),
        ``hashing_and_clustering``, ``mean_clusters`` (queries or regions per head),
        ``cluster_ratio`` and, when the q/k/v/out projections do not all run on every
        token, ``projections``. ``tokens``: the padded sequence length; ``valid_tokens``:
        the unpadded one; ``stats``: the layer's LayerStats, ``{"cluster_ratio": r}`` or a
        mean cluster count per head (variants with ``needs_stats``). Default: exact."""
        del layer_index, num_heads, tokens, stats
        return exact_layer_flops(d_model, valid_tokens)

    def build_rcda(self, d_model: int, num_heads: int, *, layer_index: int, num_layers: int,
                   dropout: float = 0.0, dtype: Any = None, rngs: nnx.Rngs):
        """The row-column decoupled self-attention (RCDA) of encoder layer ``layer_index``
        of an Anchor DETR encoder, for the variants that have an RCDA form: a module with
        ``self_attention(row, col, src, mask, rng) -> ((B, h*w, d), stats)`` (see
        :mod:`detr_jax.models.rcda`). Default: none (ValueError)."""
        del d_model, num_heads, layer_index, num_layers, dropout, dtype, rngs
        raise ValueError(f"Anchor DETR's RCDA encoder supports exact and ENACT attention "
                         f"only, not {self.to_string()!r}; use attention_type="
                         f"'nn.MultiheadAttention' for the other encoder attention variants")

    def rcda_layer_flops(self, layer_index: int, *, d_model: int, num_heads: int, h: int,
                         w: int, valid_h: int, valid_w: int, stats: Any = None) -> dict:
        """Multiply-accumulates per image of one RCDA encoder layer's attention
        (``projections``, ``products``, ``hashing_and_clustering``), as
        :mod:`detr_jax.models.anchor_flops` counts them. Default: plain RCDA."""
        del layer_index, num_heads, stats
        from detr_jax.models.anchor_flops import rcda_macs
        return {**rcda_macs(h * w, valid_h * valid_w, h, w, valid_h, valid_w, d_model),
                "hashing_and_clustering": 0.0}

    def to_string(self) -> str:
        """The command-line form of this spec, e.g. ``act:L=32,r=8``."""
        return self.name
