"""Which implementation computes softmax attention, chosen when a model is built.

Kernels:

- ``"xla"``: ``softmax.masked_softmax_attention`` (einsum, softmax, einsum; the (Nq, Nk)
  logits live in memory). Runs everywhere.
- ``"xla_map"``: ``softmax.mapped_softmax_attention``, the same computation one (image,
  head) at a time so each logit block stays in cache: the fastest on CPUs.
- ``"flash"``: ``flash.flash_attention`` (Pallas/Triton, CUDA GPUs; time and memory
  linear in the query rows that do work, ragged query counts for ACT). ACT numbers its
  clusters with the fused hash-table kernel (``table_kernel``) on this backend.
- ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` for bf16/fp16
  exact attention on CUDA GPUs (float32 inputs take the XLA path); clustered variants
  compute like ``"xla"``.
- ``"flash_interpret"``: the Pallas kernel run by the interpreter (slow; CPU tests of the
  kernel path).
- ``"tpu_flash"``: ``tpu_flash.tpu_flash_attention``, JAX's Pallas TPU flash-attention
  kernel (forward and backward; key padding as segment ids, lengths padded to multiples
  of 128). Time quadratic, memory linear in N: the (Nq, Nk) logits are never stored.
  :meth:`AttentionBackend.attention` and :meth:`AttentionBackend.softmax` without a logit
  bias run on it; a logit bias (ACT's key clusters) and dropout take the XLA ops. ACT's
  query clustering (group Q) keeps the XLA path's capacity ladder: the prototypes at the
  ladder capacity attend through this kernel (no remat around the switch, the kernel
  stores no probabilities); groups K and QK carry a log-size bias and compute on XLA.
  ENACT keeps its XLA key-block path (``key_block_attention``); the model's other
  attentions (decoder, exact encoder layers) use the kernel. ACT numbers clusters with
  the sort.
- ``"tpu_flash_interpret"``: the same kernels under Pallas's TPU interpreter, on any
  backend (slow; CPU tests of the TPU path).
- ``"auto"``: ``"flash"`` where the kernel compiles on the default backend (a CUDA GPU),
  ``"tpu_flash"`` on TPUs, ``"xla_map"`` on CPUs, ``"xla"`` elsewhere.

Attention dropout (training): ``MultiHeadAttention.__call__`` (given a dropout key and a
rate above 0) hands its ``attend`` the backend :meth:`AttentionBackend.with_dropout`
returns. How training calls run is the backend's ``training`` setting (the model config's
``attention_training``):

- ``"xla"``: a call with attention dropout runs on kernel ``"xla"``
  carrying the rate and the key, which :meth:`AttentionBackend.attention` applies to the
  softmax probabilities; the variants read ``self.backend`` as always, so their fused
  paths (``backend.fused``) are not taken while dropping. Without dropout the fused
  kernel's gradient recomputes the probabilities with XLA ops.
- ``"fused"`` (the default): the fused GPU kernel keeps training calls: it draws the dropout mask
  inside the kernel (``flash.dropout_keep``, a hash of a seed from the key; not
  jax.random's stream) and its gradient runs the backward kernels
  (``flash_backward``; the XLA recomputation, with the same mask, for ACT's prototype
  means). No (Nq, Nk) matrix is stored, forward or backward. Other kernels ignore it.

Evaluation (no dropout key) keeps the built backend. Training with
``model.attention_dropout = 0`` keeps the fused kernels under both settings.

``resolve_backend`` turns a name into an :class:`AttentionBackend` for the platform it is
called on; the model calls it once, when it is built (config fields ``attention_backend``,
``attention_key_splits`` and ``attention_training``), and hands the result to its
attention modules. Nothing
read at trace time decides what a compiled function computes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from detr_jax.attention import flash, tpu_flash
from detr_jax.attention.softmax import (cudnn_attention, mapped_softmax_attention,
                                        masked_softmax_attention)

BACKENDS = ("auto", "xla", "xla_map", "flash", "cudnn", "flash_interpret", "tpu_flash",
            "tpu_flash_interpret")
FUSED = ("flash", "flash_interpret")
TRAINING = ("xla", "fused")
TPU_KERNELS = ("tpu_flash", "tpu_flash_interpret")


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """A resolved attention backend.

    Attributes:
      kernel: one of ``BACKENDS`` other than ``"auto"``.
      key_splits: key ranges per row of the fused kernel (split-K, a positive integer),
        or None for ``flash.auto_key_splits``.
      dropout_rate, dropout_rng: attention dropout applied by :meth:`attention` (set by
        :meth:`with_dropout` for one training call; 0 and None otherwise).
      training: ``"xla"`` or ``"fused"``: how the fused kernel's training calls run
        (dropout on XLA and an XLA gradient, or dropout and gradient in kernels; see the
        module's docstring).
    """

    kernel: str = "xla"
    key_splits: int | None = None
    training: str = "fused"
    # Attention dropout of a training call (``with_dropout``): rate and PRNG key.
    dropout_rate: float = 0.0
    dropout_rng: Any = dataclasses.field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if self.kernel not in BACKENDS or self.kernel == "auto":
            raise ValueError(f"AttentionBackend: kernel {self.kernel!r} must be one of "
                             f"{BACKENDS[1:]} (resolve 'auto' with resolve_backend)")
        if self.key_splits is not None and (isinstance(self.key_splits, bool)
                                            or not isinstance(self.key_splits, int)
                                            or self.key_splits < 1):
            raise ValueError(f"AttentionBackend: key_splits={self.key_splits!r} must be a "
                             "positive integer or None")
        if self.training not in TRAINING:
            raise ValueError(f"AttentionBackend: training={self.training!r} must be one of "
                             f"{TRAINING}")

    def with_dropout(self, rate: float, rng: jax.Array | None) -> "AttentionBackend":
        """The backend of a training call with attention dropout ``rate`` and key ``rng``:
        this kernel when it is fused and ``training`` is ``"fused"``, else ``"xla"``;
        ``self`` when ``rng`` is None or ``rate`` is 0."""
        if rng is None or not rate:
            return self
        kernel = self.kernel if self.fused and self.training == "fused" else "xla"
        return dataclasses.replace(self, kernel=kernel, dropout_rate=float(rate),
                                   dropout_rng=rng)

    @property
    def dropping(self) -> bool:
        """Whether :meth:`attention` drops probabilities (a training call's backend)."""
        return self.dropout_rng is not None and self.dropout_rate > 0.0

    @property
    def fused(self) -> bool:
        """Whether attention runs through the Pallas kernel (ragged query rows)."""
        return self.kernel in FUSED

    @property
    def tiled(self) -> bool:
        """Whether exact attention (no logit bias) runs through a kernel that never stores
        the (Nq, Nk) probabilities: the fused GPU kernel (while dropping too: a dropping
        backend is fused only under training "fused", whose kernel drops) or the TPU
        kernel (not while dropping)."""
        return self.fused or (not self.dropping and self.kernel in TPU_KERNELS)

    @property
    def numbering(self) -> str:
        """ACT's ``ids=auto`` on this backend: the table numbering with the fused kernel
        (GPUs, one fused kernel) and on CPUs (XLA ops, about 10x faster there than the
        sort), the sort elsewhere."""
        return "table" if self.kernel in ("flash", "xla_map") else "sort"

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array,
                  key_padding_mask: jax.Array | None,
                  query_counts: jax.Array | None = None) -> jax.Array:
        """Scaled dot-product attention over per-head tensors with this backend's kernel.

        q (B, Nq, H, Dh) scaled, k/v (B, Nk, H, Dh), key_padding_mask (B, Nk) True on
        padding or None -> (B, Nq, H, Dh). ``query_counts`` (B, H): only that many leading
        query rows per (image, head) are needed; the fused kernel skips the others
        (zeros), the other kernels compute them. With dropout (:meth:`with_dropout`) the
        probabilities are dropped (``softmax.drop_probabilities``).
        """
        if self.fused:  # dropping too under training "fused" (else the kernel is "xla")
            valid = None if key_padding_mask is None else ~key_padding_mask.astype(bool)
            return self.flash(q, k, v, valid, query_counts)
        if self.dropping:
            return self.softmax(q, k, v, key_padding_mask)
        if self.kernel == "cudnn":
            return cudnn_attention(q, k, v, key_padding_mask)
        return self.softmax(q, k, v, key_padding_mask)

    def tpu(self, q: jax.Array, k: jax.Array, v: jax.Array,
            key_padding_mask: jax.Array | None) -> jax.Array:
        """``tpu_flash.tpu_flash_attention`` with this backend's interpreter flag (shapes
        as :meth:`attention`)."""
        return tpu_flash.tpu_flash_attention(q, k, v, key_padding_mask,
                                             interpret=self.kernel == "tpu_flash_interpret")

    def softmax(self, q: jax.Array, k: jax.Array, v: jax.Array,
                key_padding_mask: jax.Array | None, key_bias: jax.Array | None = None
                ) -> jax.Array:
        """Softmax attention without ragged query counts (the path for inputs the fused GPU
        kernel does not take, such as a logit bias): :func:`softmax.masked_softmax_attention`,
        or its per-(image, head) form on ``"xla_map"``; with this backend's dropout when
        dropping. On the TPU kernels, calls without ``key_bias`` (and without dropout) run
        on the TPU kernel (:meth:`tpu`). Shapes as :meth:`attention`; ``key_bias``
        (B, H, 1 or Nq, Nk) or None."""
        if self.dropping:
            return masked_softmax_attention(q, k, v, key_padding_mask, key_bias=key_bias,
                                            dropout_rate=self.dropout_rate,
                                            dropout_rng=self.dropout_rng)
        if self.kernel == "xla_map":
            return mapped_softmax_attention(q, k, v, key_padding_mask, key_bias=key_bias)
        if self.kernel in TPU_KERNELS and key_bias is None:
            return self.tpu(q, k, v, key_padding_mask)
        return masked_softmax_attention(q, k, v, key_padding_mask, key_bias=key_bias)

    def flash(self, q, k, v, key_valid=None, query_counts=None, query_divisors=None, **options):
        """``flash.flash_attention`` with this backend's interpreter flag, key splits,
        dropout and, under training ``"fused"``, the backward kernels (not for
        ``query_divisors``, whose gradient the XLA recomputation gives)."""
        fused_backward = self.training == "fused" and query_divisors is None
        return flash.flash_attention(q, k, v, key_valid, query_counts, query_divisors,
                                     interpret=self.kernel == "flash_interpret",
                                     key_splits=self.key_splits,
                                     dropout_rate=self.dropout_rate, dropout_rng=self.dropout_rng,
                                     backward="kernel" if fused_backward else "xla", **options)


def parse_key_splits(value) -> int | None:
    """``"auto"`` or None -> None; a positive integer (or its string) -> that integer."""
    if value is None or value == "auto":
        return None
    text = str(value)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"attention key splits {value!r}: expected 'auto' or a positive integer")
    return int(text)


def resolve_backend(name: str = "auto", key_splits: int | str | None = "auto",
                    training: str = "fused") -> AttentionBackend:
    """The backend ``name`` (one of ``BACKENDS``) for the platform this is called on.

    ``"auto"`` becomes ``"flash"`` where the fused kernel compiles (CUDA GPUs),
    ``"tpu_flash"`` on TPUs, ``"xla_map"`` on CPUs and ``"xla"`` elsewhere. ``"flash"`` and
    ``"cudnn"`` need a GPU and ``"tpu_flash"`` a TPU: they raise ValueError on other
    platforms. ``key_splits``: ``"auto"`` (or None) or a positive integer. ``training``:
    ``"xla"`` or ``"fused"`` (:class:`AttentionBackend`).
    """
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: choose one of {BACKENDS}")
    if name == "auto":
        if flash.available():
            name = "flash"
        elif jax.default_backend() == "tpu" and tpu_flash.available():
            name = "tpu_flash"
        else:
            name = "xla_map" if jax.default_backend() == "cpu" else "xla"
    elif name in ("flash", "cudnn") and jax.default_backend() != "gpu":
        raise ValueError(f"attention backend {name!r} needs a CUDA GPU; the default JAX "
                         f"backend is {jax.default_backend()!r} (use 'xla' or 'auto')")
    elif name == "tpu_flash" and jax.default_backend() != "tpu":
        raise ValueError(f"attention backend 'tpu_flash' needs a TPU; the default JAX backend "
                         f"is {jax.default_backend()!r} (use 'tpu_flash_interpret' to run "
                         "its kernels in the interpreter, or 'auto')")
    if training not in TRAINING:
        raise ValueError(f"attention training {training!r}: choose one of {TRAINING}")
    return AttentionBackend(name, parse_key_splits(key_splits), training)
