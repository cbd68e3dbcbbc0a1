"""Anchor DETR (Wang et al. 2022; official code megvii-research/AnchorDETR) in Flax NNX.

The official model with the default arguments of its ``main.py``: ResNet-50 with DC5
(frozen BatchNorm), one feature level, ``input_proj`` = 1x1 conv + GroupNorm(32), an RCDA
encoder of 6 layers, 300 learned anchor points x 3 patterns = 900 queries, a decoder of 6
layers (plain self-attention, RCDA cross-attention), FFN 1024, dropout 0, class (91
sigmoid classes, no no-object column) and box heads shared across decoder layers, and the
official PostProcess (top 100 over queries x classes). See
:mod:`detr_jax.models.anchor_transformer` and :mod:`detr_jax.models.rcda` for the parts.

Subtleties of the official code kept here:
- GroupNorm of ``input_proj`` normalizes over the whole padded feature map, and RCDA
  averages keys over padded rows and columns, so (as with DETR-DC5) an image's outputs
  change when it is padded in a batch.
- Position encodings come from the feature-level padding mask only (``mask2pos``): the
  first column of the mask gives the row positions and the first row the column positions.
- Each official checkpoint stores the shared heads once per decoder layer
  (``transformer.class_embed.0..5``, ``transformer.bbox_embed.0..5``); torch's
  ``load_state_dict`` copies each into the one shared module in turn, so the last copy
  wins (see :mod:`detr_jax.convert.anchor`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from detr_jax.attention import parse_attention
from detr_jax.boxes import cxcywh_to_xyxy
from detr_jax.models.anchor_transformer import AnchorTransformer
from detr_jax.models.backbone import ResNet
from detr_jax.models.config import backbone_channels
from detr_jax.models.detr import resolve_dtype
from detr_jax.models.position import downsample_mask
from detr_jax.models.transformer import encoder_layer_keys
from detr_jax.precision import uses_matmul_precision

DETECTOR_NAME = "anchor_detr"


def anchor_detr_config(**overrides) -> ml_collections.ConfigDict:
    """The official Anchor DETR-DC5 R50 configuration; keyword arguments override fields
    (a dict merges into ``backbone``).

    Fields:
      detector: "anchor_detr" (the registry name).
      backbone: as :func:`detr_jax.models.config.model_config` (DC5 by default here).
      hidden_dim, num_heads, enc_layers, dec_layers, ffn_dim, dropout, layer_norm_eps.
      input_proj_groups: GroupNorm groups after the input projection (32).
      num_query_position: learned anchor points (300); num_query_pattern: patterns (3);
        the model has ``num_query_position * num_query_pattern`` queries.
      num_classes: sigmoid classes (91 for COCO; class index = COCO category id).
      num_select: detections kept per image by ``postprocess`` (100).
      attention_type: "RCDA" (the default) or "nn.MultiheadAttention" (the official
        option: standard attention with 2-D position embeddings in the encoder and the
        decoder's cross-attention).
      encoder_attention: the encoder attention: for the "nn.MultiheadAttention" type any
        (``exact``, ``act:L=32``, ``kmeans:...``); for RCDA "exact" (plain RCDA) or ENACT
        (``enact:sigma=5,variant=released``, the released Anchor-DETR-ENACT; see
        :mod:`detr_jax.models.rcda_enact`).
      attention_backend, attention_key_splits, attention_training: the attention kernel
        of the standard attentions and how training calls use it
        (``detr_jax.attention.backend.resolve_backend``), "auto", "auto" and "fused".
      dtype: compute dtype (``float32`` or ``bfloat16``); parameters stay float32.
      matmul_precision: ``default``, ``high`` or ``highest`` (``detr_jax.precision``).
    """
    cfg = ml_collections.ConfigDict()
    cfg.detector = DETECTOR_NAME
    cfg.backbone = ml_collections.ConfigDict(
        dict(stages=(3, 4, 6, 3), width=64, dilation=True, bn_eps=1e-5, norm="frozen_bn",
             norm_groups=8))
    cfg.hidden_dim = 256
    cfg.num_heads = 8
    cfg.enc_layers = 6
    cfg.dec_layers = 6
    cfg.ffn_dim = 1024
    cfg.dropout = 0.0
    cfg.layer_norm_eps = 1e-5
    cfg.input_proj_groups = 32
    cfg.num_query_position = 300
    cfg.num_query_pattern = 3
    cfg.num_classes = 91
    cfg.num_select = 100
    cfg.attention_type = "RCDA"
    cfg.encoder_attention = "exact"
    cfg.attention_backend = "auto"
    cfg.attention_key_splits = "auto"
    cfg.attention_training = "fused"
    cfg.dtype = "float32"
    cfg.matmul_precision = "default"
    for key, value in overrides.items():
        if key == "attention_key_splits":
            value = str(value)
        if isinstance(value, dict) and isinstance(cfg.get(key), ml_collections.ConfigDict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def tiny_anchor_detr_config(**overrides) -> ml_collections.ConfigDict:
    """A very small Anchor DETR (same code) for unit tests."""
    base = dict(backbone=dict(stages=(1, 1, 1, 1), width=8, dilation=False), hidden_dim=32,
                num_heads=4, enc_layers=2, dec_layers=2, ffn_dim=64, input_proj_groups=8,
                num_query_position=6, num_query_pattern=2, num_classes=5, num_select=10)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return anchor_detr_config(**base)


class InputProjection(nnx.Module):
    """1x1 conv to ``hidden_dim`` then GroupNorm (eps 1e-5, two-pass variance), NHWC."""

    def __init__(self, in_ch: int, d: int, groups: int, dtype: Any, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_ch, d, (1, 1), padding="VALID", dtype=dtype, rngs=rngs,
                             kernel_init=nnx.initializers.xavier_uniform())
        self.norm = nnx.GroupNorm(d, num_groups=groups, epsilon=1e-5, use_fast_variance=False,
                                  dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.conv(x))


class AnchorDETR(nnx.Module):
    """Anchor DETR. Call ``model(pixel_values, padding_mask)``.

    Args (``__call__``):
      pixel_values: (B, H, W, 3) float32, ImageNet-normalized, zero-padded bottom/right.
      padding_mask: (B, H, W) bool, True on padding.
      rng: optional PRNG key; with ``train`` it drives dropout (0 in the official model).
      train: apply dropout.
      return_intermediates: also return ``backbone`` (B, h, w, C), ``feature_mask``
        (B, h, w), ``pos_embed`` (the pair ``(posemb_row (B, w, d), posemb_col (B, h, d))``)
        and ``memory`` (B, h*w, d).
    Returns a dict with ``pred_logits`` (B, Q, num_classes) (sigmoid logits),
    ``pred_boxes`` (B, Q, 4) (cx, cy, w, h relative to the unpadded image),
    ``aux_outputs`` (the same for every decoder layer but the last) and ``encoder_stats``
    (one entry per encoder layer: None for plain RCDA and exact attention).

    The detector stages (``backbone_features``, ``encode``, ``decode``) follow
    :class:`detr_jax.models.detector.Detector`; this detector's position embedding ``pos``
    is the triple ``(posemb_row, posemb_col, posemb_2d)``: 1-D embeddings for RCDA, a 2-D
    map for standard attention (the unused entries None).
    """

    @staticmethod
    def default_criterion(loss_cfg):
        """The official recipe's focal set criterion (``detr_jax.training.losses.Criterion``)
        for a ``loss`` config section: what MTKD distils with."""
        from detr_jax.training.focal import FocalWeights, focal_criterion
        return focal_criterion(FocalWeights.from_config(loss_cfg))

    @staticmethod
    def default_loss(loss_cfg):
        """The training loss of the official recipe for a ``loss`` config section (the
        training CLI's default): the focal criterion of :mod:`detr_jax.training.focal`."""
        from detr_jax.training.focal import FocalWeights, focal_detr_loss
        return focal_detr_loss(FocalWeights.from_config(loss_cfg))

    def __init__(self, cfg, *, encoder_attention=None, rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        spec = parse_attention(encoder_attention if encoder_attention is not None
                               else cfg.get("encoder_attention", "exact"))
        self.attention_spec = spec
        dtype = resolve_dtype(cfg.dtype)
        self.dtype = dtype
        self.backbone = ResNet(tuple(cfg.backbone.stages), width=cfg.backbone.width,
                               dilation=cfg.backbone.dilation, bn_eps=cfg.backbone.bn_eps,
                               norm=cfg.backbone.get("norm", "frozen_bn"),
                               norm_groups=cfg.backbone.get("norm_groups", 8),
                               dtype=dtype, rngs=rngs)
        self.input_proj = InputProjection(backbone_channels(cfg), cfg.hidden_dim,
                                          cfg.input_proj_groups, dtype, rngs)
        self.transformer = AnchorTransformer(cfg, spec, dtype, rngs)
        self.num_queries = cfg.num_query_position * cfg.num_query_pattern
        self.num_select = cfg.num_select

    @uses_matmul_precision
    def backbone_features(self, pixel_values, padding_mask):
        """-> features (B, h, w, C), feature mask (B, h, w), and ``pos`` =
        (posemb_row (B, w, d), posemb_col (B, h, d), posemb_2d (B, h, w, d)), the ones the
        attention type uses set and the others None."""
        features = self.backbone(pixel_values.astype(self.dtype))
        mask = downsample_mask(padding_mask, features.shape[1:3])
        return features, mask, self.transformer.position_embeddings(mask)

    @uses_matmul_precision
    def encode(self, features, mask, pos, *, rng=None, train=False):
        """Input projection and the encoder -> memory (B, h*w, d) and the per-layer
        attention statistics (None for plain RCDA and exact attention)."""
        memory, stats = self.transformer.encode(self.input_proj(features), mask, pos, rng=rng,
                                                train=train)
        batch, h, w, d = memory.shape
        return memory.reshape(batch, h * w, d), stats

    @uses_matmul_precision
    def decode(self, memory, mask, pos, *, rng=None, train=False):
        """Decoder and shared heads -> dict of predictions (final and auxiliary)."""
        batch, h, w = mask.shape
        logits, boxes = self.transformer.decode(memory.reshape(batch, h, w, -1), mask, pos,
                                                rng=rng if train else None)
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": logits[i], "pred_boxes": boxes[i]}
                            for i in range(logits.shape[0] - 1)],
        }

    @uses_matmul_precision
    def postprocess(self, outputs, original_sizes):
        """The official PostProcess: sigmoid scores, top ``num_select`` over queries x
        classes. outputs, (B, 2) (height, width) -> scores (B, K) float32, labels (B, K)
        int32 (class index = COCO category id), boxes (B, K, 4) xyxy in original pixels."""
        return topk_postprocess(outputs["pred_logits"], outputs["pred_boxes"], original_sizes,
                                self.num_select)

    def fold_frozen_norms(self):
        """Fold the backbone's frozen BatchNorms into its convolutions, in place (for
        inference copies: ``detr_jax.models.inference.inference_model``)."""
        self.backbone.fold_norms()

    def encoder_attention_layers(self):
        """The encoder's attention modules in layer order for the "nn.MultiheadAttention"
        type; none for RCDA (not one of the swappable encoder attentions)."""
        if self.transformer.rcda:
            return []
        return [layer.self_attn for layer in self.transformer.encoder_layers]

    @uses_matmul_precision
    def encoder_attention_inputs(self, pixel_values, padding_mask, rng):
        """Per encoder layer ``(queries, keys, values (B, N, d), key_padding_mask (B, N),
        attn_rng)`` as its attention receives them (none for RCDA), and (h, w)."""
        features, mask, pos = self.backbone_features(pixel_values, padding_mask)
        src = self.input_proj(features)
        calls = []
        if not self.transformer.rcda:
            for index, layer in enumerate(self.transformer.encoder_layers):
                attn_rng = encoder_layer_keys(rng, index)[0]
                calls.append((*layer.attention_inputs(src, mask, pos), attn_rng))
                src, _ = layer(src, mask, pos, attn_rng=attn_rng)
        return calls, tuple(src.shape[1:3])

    def flops(self, image_hw, valid_hw=None, encoder_stats=None):
        """Multiply-accumulates of one image (:func:`anchor_detr_flops`) under this model's
        encoder attention; ``encoder_stats``: one image's per-layer statistics, needed only
        by data-dependent variants (ENACT; plain RCDA's cost is fixed)."""
        from detr_jax.models.anchor_flops import anchor_detr_flops
        return anchor_detr_flops(self.config, image_hw, valid_hw, attention=self.attention_spec,
                                 encoder_stats=encoder_stats)

    @uses_matmul_precision
    def __call__(self, pixel_values, padding_mask, *, rng=None, train=False,
                 return_intermediates=False):
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != 3:
            raise ValueError(f"pixel_values must be (B, H, W, 3) NHWC, got {pixel_values.shape}")
        if padding_mask.shape != pixel_values.shape[:3]:
            raise ValueError(f"padding_mask shape {padding_mask.shape} does not match "
                             f"pixel_values {pixel_values.shape[:3]}")
        enc_rng = dec_rng = None
        if rng is not None:
            enc_rng, dec_rng = jax.random.split(rng)
        features, mask, pos = self.backbone_features(pixel_values, padding_mask)
        memory, stats = self.encode(features, mask, pos, rng=enc_rng, train=train)
        out = self.decode(memory, mask, pos, rng=dec_rng, train=train)
        out["encoder_stats"] = stats
        if return_intermediates:
            out.update(backbone=features, pos_embed=pos, feature_mask=mask, memory=memory)
        return out


def topk_postprocess(pred_logits, pred_boxes, original_sizes, num_select: int = 100):
    """Top-k over sigmoid scores of all (query, class) pairs, as the official PostProcess.

    pred_logits (B, Q, K), pred_boxes (B, Q, 4) cxcywh in [0, 1], original_sizes (B, 2)
    (height, width) -> scores (B, k), labels (B, k) int32, boxes (B, k, 4) xyxy in pixels,
    k = min(num_select, Q * K), best first.
    """
    batch, queries, classes = pred_logits.shape
    probs = jax.nn.sigmoid(pred_logits.astype(jnp.float32)).reshape(batch, queries * classes)
    scores, index = jax.lax.top_k(probs, min(num_select, queries * classes))
    query = index // classes
    labels = (index % classes).astype(jnp.int32)
    boxes = jnp.take_along_axis(cxcywh_to_xyxy(pred_boxes.astype(jnp.float32)),
                                query[..., None], axis=1)
    sizes = jnp.asarray(original_sizes).astype(jnp.float32)
    h, w = sizes[:, 0], sizes[:, 1]
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]
    return scores, labels, boxes * scale
