"""Conditional DETR (Meng et al. 2021): DETR's backbone and encoder, the conditional
decoder of :mod:`detr_jax.models.conditional_transformer`, sigmoid classification and
boxes predicted relative to each query's reference point.

The backbone, input projection, sine position embedding and encoder are DETR's own
modules, so every encoder attention (exact, ACT, K-means, ENACT) applies unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from detr_jax.attention import AttentionSpec, parse_attention
from detr_jax.boxes import cxcywh_to_xyxy
from detr_jax.models.backbone import ResNet
from detr_jax.models.conditional_transformer import (ConditionalDecoder, ConditionalTransformer,
                                                     inverse_sigmoid)
from detr_jax.models.config import backbone_channels, model_config
from detr_jax.models.detr import MLP, resolve_dtype
from detr_jax.models.position import downsample_mask, sine_position_embedding
from detr_jax.models.transformer import Encoder
from detr_jax.precision import uses_matmul_precision

DETECTOR_NAME = "conditional_detr"


def conditional_detr_config(**overrides) -> ml_collections.ConfigDict:
    """The official Conditional DETR-R50 configuration; keyword arguments override fields.

    Same fields as :func:`detr_jax.models.config.model_config` (R50, C5, d=256, 8 heads,
    6 + 6 layers, FFN 2048), with ``detector="conditional_detr"``, 300 queries and
    ``num_classes=91``: here the class head has ``num_classes`` sigmoid outputs (no
    no-object column; index = COCO category id). ``num_detections`` (100) is the number
    of (query, class) pairs the post-processing keeps per image. ``pre_norm`` selects
    pre-norm encoder layers (with the encoder's final LayerNorm); the decoder is post-norm
    in either case, as the official decoder only runs post-norm.
    """
    base = dict(detector=DETECTOR_NAME, num_queries=300, num_classes=91, num_detections=100)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return model_config(**base)


def tiny_conditional_detr_config(**overrides) -> ml_collections.ConfigDict:
    """A very small Conditional DETR (same code) for unit tests."""
    base = dict(backbone=dict(stages=(1, 1, 1, 1), width=8, dilation=False), hidden_dim=32,
                num_heads=4, enc_layers=2, dec_layers=2, ffn_dim=64, num_queries=10,
                num_classes=5, num_detections=8)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return conditional_detr_config(**base)


def topk_postprocess(pred_logits, pred_boxes, original_sizes, num_detections: int):
    """The official Conditional DETR PostProcess.

    pred_logits (B, Q, C), pred_boxes (B, Q, 4) cxcywh in [0, 1], original_sizes (B, 2)
    (height, width) -> scores (B, K) float32 (the K largest sigmoid scores over all
    queries x classes, descending), labels (B, K) int32 (class index), boxes (B, K, 4)
    xyxy in original pixels (the box of each score's query); K = min(num_detections, Q*C).
    """
    batch, queries, classes = pred_logits.shape
    prob = jax.nn.sigmoid(pred_logits.astype(jnp.float32)).reshape(batch, queries * classes)
    scores, index = jax.lax.top_k(prob, min(num_detections, queries * classes))
    query, labels = index // classes, index % classes
    boxes = jnp.take_along_axis(cxcywh_to_xyxy(pred_boxes.astype(jnp.float32)),
                                query[..., None], axis=1)
    h = original_sizes[:, 0].astype(jnp.float32)
    w = original_sizes[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]
    return scores, labels.astype(jnp.int32), boxes * scale


class ConditionalDETR(nnx.Module):
    """Conditional DETR. Call ``model(pixel_values, padding_mask)``.

    Args (``__call__``):
      pixel_values: (B, H, W, 3) float32, ImageNet-normalized, zero-padded bottom/right.
      padding_mask: (B, H, W) bool, True on padding.
      rng: optional PRNG key for the encoder-attention variant and, with ``train``, dropout.
      train: apply dropout.
      return_intermediates: also return ``backbone`` (B, h, w, C), ``pos_embed``
        (B, h, w, d), ``feature_mask`` (B, h, w), ``memory`` (B, h*w, d) and
        ``reference_points`` (B, Q, 2).
    Returns a dict with ``pred_logits`` (B, Q, num_classes) (sigmoid logits),
    ``pred_boxes`` (B, Q, 4) (cx, cy, w, h relative to the unpadded image),
    ``aux_outputs`` (the same for every decoder layer but the last) and
    ``encoder_stats`` (one entry per encoder layer).
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

    def __init__(self, cfg, *, encoder_attention: AttentionSpec | str | None = None,
                 rngs: nnx.Rngs | None = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        spec = parse_attention(encoder_attention if encoder_attention is not None
                               else cfg.encoder_attention)
        self.attention_spec = spec
        dtype = resolve_dtype(cfg.dtype)
        self.dtype = dtype
        self.backbone = ResNet(tuple(cfg.backbone.stages), width=cfg.backbone.width,
                               dilation=cfg.backbone.dilation, bn_eps=cfg.backbone.bn_eps,
                               norm=cfg.backbone.get("norm", "frozen_bn"),
                               norm_groups=cfg.backbone.get("norm_groups", 8),
                               dtype=dtype, rngs=rngs)
        d = cfg.hidden_dim
        self.input_proj = nnx.Conv(backbone_channels(cfg), d, (1, 1), padding="VALID",
                                   dtype=dtype, rngs=rngs)
        self.transformer = ConditionalTransformer(Encoder(cfg, spec, dtype, rngs),
                                                  ConditionalDecoder(cfg, dtype, rngs))
        self.query_embed = nnx.Embed(cfg.num_queries, d, rngs=rngs,
                                     embedding_init=nnx.initializers.normal(stddev=1.0))
        # The official initialization: class prior 0.01 for the focal loss, and a zero last
        # box layer so that the first boxes sit on the reference points.
        prior = -math.log((1 - 0.01) / 0.01)
        self.class_embed = nnx.Linear(d, cfg.num_classes, dtype=dtype, rngs=rngs,
                                      bias_init=nnx.initializers.constant(prior))
        self.bbox_embed = MLP((d, d, d, 4), dtype, rngs)
        last = self.bbox_embed.layers[-1]
        last.kernel.set_value(jnp.zeros_like(last.kernel.get_value()))
        self.position_temperature = cfg.position_temperature
        self.num_detections = int(cfg.get("num_detections", 100))

    @uses_matmul_precision
    def backbone_features(self, pixel_values, padding_mask):
        """-> (features (B, h, w, C), feature mask (B, h, w), position embedding (B, h, w, d))."""
        features = self.backbone(pixel_values.astype(self.dtype))
        mask = downsample_mask(padding_mask, features.shape[1:3])
        pos = sine_position_embedding(mask, self.config["hidden_dim"] // 2,
                                      self.position_temperature)
        return features, mask, pos

    @uses_matmul_precision
    def encode(self, features, mask, pos, *, rng=None, train=False):
        """Project backbone features and run DETR's encoder -> (memory (B, N, d), stats)."""
        src = self.input_proj(features)
        batch, h, w, d = src.shape
        src = src.reshape(batch, h * w, d)
        pos = pos.reshape(batch, h * w, d).astype(src.dtype)
        return self.transformer.encoder(src, pos, mask.reshape(batch, h * w), rng=rng,
                                        train=train)

    @uses_matmul_precision
    def decode(self, memory, mask, pos, *, rng=None, train=False):
        """Conditional decoder and heads -> dict of predictions (final and auxiliary)."""
        return self.decode_with_reference(memory, mask, pos, rng=rng, train=train)[0]

    @uses_matmul_precision
    def decode_with_reference(self, memory, mask, pos, *, rng=None, train=False):
        """As :meth:`decode`, also returning the reference points (B, Q, 2) (x, y)."""
        batch = memory.shape[0]
        flat_mask = mask.reshape(batch, -1)
        flat_pos = pos.reshape(batch, flat_mask.shape[1], -1).astype(memory.dtype)
        hs, reference = self.transformer.decoder(memory, flat_pos, flat_mask,
                                                 self.query_embed.embedding[...], rng=rng,
                                                 train=train)
        logits = self.class_embed(hs).astype(jnp.float32)
        raw = self.bbox_embed(hs).astype(jnp.float32)
        offset = jnp.pad(inverse_sigmoid(reference), ((0, 0), (0, 0), (0, 2)))
        boxes = jax.nn.sigmoid(raw + offset)
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": logits[i], "pred_boxes": boxes[i]}
                            for i in range(logits.shape[0] - 1)],
        }, reference

    @uses_matmul_precision
    def postprocess(self, outputs, original_sizes):
        """The official PostProcess (top ``num_detections`` over queries x classes of the
        sigmoid scores): outputs, (B, 2) (height, width) -> scores (B, K), labels (B, K)
        int32, boxes (B, K, 4) xyxy in original pixels (see :func:`topk_postprocess`)."""
        return topk_postprocess(outputs["pred_logits"], outputs["pred_boxes"],
                                jnp.asarray(original_sizes), self.num_detections)

    def fold_frozen_norms(self):
        """Fold the backbone's frozen BatchNorms into its convolutions, in place (for
        inference copies: ``detr_jax.models.inference.inference_model``)."""
        self.backbone.fold_norms()

    def encoder_attention_layers(self):
        """The encoder's self-attention modules, in layer order."""
        return self.transformer.encoder.attention_layers()

    @uses_matmul_precision
    def encoder_attention_inputs(self, pixel_values, padding_mask, rng):
        """Per encoder layer, ``(queries, keys, values, key_padding_mask, attn_rng)`` as
        that layer's attention receives them ((B, N, d), (B, N) bool), and (h, w).

        ``rng`` is the encoder's key; the layers run as in ``encode`` (no dropout).
        """
        features, mask, pos = self.backbone_features(pixel_values, padding_mask)
        src = self.input_proj(features)
        batch, h, w, d = src.shape
        src = src.reshape(batch, h * w, d)
        pos = pos.reshape(batch, h * w, d).astype(src.dtype)
        flat_mask = mask.reshape(batch, h * w)
        return self.transformer.encoder.attention_inputs(src, pos, flat_mask, rng), (h, w)

    def flops(self, image_hw, valid_hw=None, encoder_stats=None):
        """Multiply-accumulates of one image under this model's config and encoder
        attention (:func:`detr_jax.models.conditional_flops.count_conditional_flops`)."""
        from detr_jax.models.conditional_flops import count_conditional_flops
        return count_conditional_flops(self.config, tuple(image_hw),
                                       valid_hw=None if valid_hw is None else tuple(valid_hw),
                                       attention=self.attention_spec,
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
        out, reference = self.decode_with_reference(memory, mask, pos, rng=dec_rng, train=train)
        out["encoder_stats"] = stats
        if return_intermediates:
            out.update(backbone=features, pos_embed=pos, feature_mask=mask, memory=memory,
                       reference_points=reference)
        return out
