"""The interface every detector implements, so that building, loading, evaluation, plots,
FLOPs and training work for any detector of the family (DETR first).

A detector is an ``nnx.Module`` built as ``cls(cfg, encoder_attention=..., rngs=...)``
(registered in :mod:`detr_jax.models.registry`). Its forward pass is split into three
stages so that evaluation can run the backbone once and the encoder and decoder under
several encoder-attention settings:

    features, mask, pos = model.backbone_features(pixel_values, padding_mask)
    memory, stats = model.encode(features, mask, pos, rng=encoder_rng)
    outputs = model.decode(memory, mask, pos)
    scores, labels, boxes = model.postprocess(outputs, original_sizes)

``model(pixel_values, padding_mask, rng=key)`` runs the same stages, the encoder with
``jax.random.split(key)[0]`` (:func:`encoder_key`). The training loss is not a method:
the trainer takes it as an injected function (``detr_jax.training.losses.LossFn``); a
detector names its recipe's with the static methods ``default_loss(loss_cfg)`` (a
``LossFn``) and ``default_criterion(loss_cfg)`` (the set criterion of its outputs, a
``detr_jax.training.losses.Criterion``, which MTKD builds on).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import jax


def encoder_key(rng: jax.Array) -> jax.Array:
    """The key a detector's encoder receives when ``model(..., rng=rng)`` is called."""
    return jax.random.split(rng)[0]


@runtime_checkable
class Detector(Protocol):
    """What build, load, evaluation, plots, FLOPs and the trainer may use of a detector.

    Shapes: B images, (H, W) padded input, (h, w) feature map, N = h * w tokens, d the
    transformer width, Q queries.
    """

    config: dict            # the model config as a plain dict (``detector`` names the class)
    attention_spec: Any     # the encoder-attention spec (``detr_jax.attention.AttentionSpec``)

    def __call__(self, pixel_values: jax.Array, padding_mask: jax.Array, *,
                 rng: jax.Array | None = None, train: bool = False,
                 return_intermediates: bool = False) -> dict:
        """(B, H, W, 3) normalized pixels, (B, H, W) bool padding -> outputs dict with at
        least ``encoder_stats`` (one entry per encoder layer) and what ``postprocess`` and
        the detector's loss read."""

    def backbone_features(self, pixel_values: jax.Array, padding_mask: jax.Array
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """-> features (B, h, w, C), feature padding mask (B, h, w) bool, position
        embedding (B, h, w, d)."""

    def encode(self, features: jax.Array, mask: jax.Array, pos: jax.Array, *,
               rng: jax.Array | None = None, train: bool = False) -> tuple[jax.Array, list]:
        """The encoder -> memory (B, N, d) and per-layer statistics (a list of one entry
        per encoder layer; None for exact attention)."""

    def decode(self, memory: jax.Array, mask: jax.Array, pos: jax.Array, *,
               rng: jax.Array | None = None, train: bool = False) -> dict:
        """Decoder and heads -> the prediction dict (final and auxiliary)."""

    def postprocess(self, outputs: dict, original_sizes: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The detector's official post-processing, jittable: outputs and (B, 2) (height,
        width) -> scores (B, Q') float32, labels (B, Q') int, boxes (B, Q', 4) xyxy in
        original pixels."""

    def fold_frozen_norms(self) -> None:
        """Folds every frozen BatchNorm into the convolution before it, in place, so that
        inference does not redo the fold on every call; changes the state's structure
        (called on inference copies only, ``detr_jax.models.inference.inference_model``)."""

    def encoder_attention_layers(self) -> list:
        """The encoder-attention modules in encoder order (for cluster maps)."""

    def encoder_attention_inputs(self, pixel_values: jax.Array, padding_mask: jax.Array,
                                 rng: jax.Array | None) -> tuple[list, tuple[int, int]]:
        """Runs the encoder layer by layer with the keys ``encode`` uses; returns, per
        layer, the arguments its attention module was called with, ``(queries (B, N, d),
        keys (B, N, d), values (B, N, d), key_padding_mask (B, N), attn_rng)``, and the
        feature map's (h, w). ``rng`` is the encoder's key (:func:`encoder_key`)."""

    def flops(self, image_hw: Sequence[int], valid_hw: Sequence[int] | None = None,
              encoder_stats: Sequence | None = None) -> dict:
        """Multiply-accumulates of one image of padded size ``image_hw`` (unpadded
        ``valid_hw``) under this detector's encoder attention; ``encoder_stats`` are one
        image's per-layer statistics. Keys as ``detr_jax.flops.count_flops`` (at least
        ``gflops_backbone`` and ``gflops_transformer``)."""
