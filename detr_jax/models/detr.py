"""The DETR detector: backbone, input projection, transformer, class and box heads."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detr_jax.attention import AttentionSpec, parse_attention
from detr_jax.models.backbone import ResNet
from detr_jax.models.config import backbone_channels
from detr_jax.models.position import downsample_mask, sine_position_embedding
from detr_jax.models.transformer import Transformer
from detr_jax.precision import uses_matmul_precision


class MLP(nnx.Module):
    """Linear layers with ReLU between them (the official box head: d-d-d-4)."""

    def __init__(self, sizes, dtype, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


def resolve_dtype(name: str | Any):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}.get(name, name)


class DETR(nnx.Module):
    """DETR. Call ``model(pixel_values, padding_mask)``.

    Args (``__call__``):
      pixel_values: (B, H, W, 3) float32, ImageNet-normalized, zero-padded bottom/right.
      padding_mask: (B, H, W) bool, True on padding.
      rng: optional PRNG key for the encoder-attention variant and, with ``train``, dropout.
      train: apply dropout.
      return_intermediates: also return ``backbone`` (B, h, w, C), ``pos_embed``
        (B, h, w, d), ``feature_mask`` (B, h, w) and ``memory`` (B, h*w, d).
    Returns a dict with ``pred_logits`` (B, Q, num_classes + 1), ``pred_boxes`` (B, Q, 4)
    (cx, cy, w, h relative to the unpadded image), ``aux_outputs`` (the same for every
    decoder layer but the last) and ``encoder_stats`` (one entry per encoder layer).

    DETR implements :class:`detr_jax.models.detector.Detector` (registered as "detr").
    """

    @staticmethod
    def default_criterion(loss_cfg):
        """DETR's set criterion (``detr_jax.training.losses.Criterion``) for a ``loss``
        config section: what MTKD distils with."""
        from detr_jax.training.losses import LossWeights, detr_criterion
        return detr_criterion(LossWeights(**loss_cfg.to_dict()))

    @staticmethod
    def default_loss(loss_cfg):
        """The training loss of DETR's recipe for a ``loss`` config section (the training
        CLI's default): cross-entropy with no-object weight, L1 and GIoU."""
        from detr_jax.training.losses import LossWeights, detr_loss
        return detr_loss(LossWeights(**loss_cfg.to_dict()))

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
        self.transformer = Transformer(cfg, spec, dtype, rngs)
        # N(0, 1) as torch's nn.Embedding: the queries must differ from the start, or all
        # of them predict the same box (with a small std, training from scratch does not
        # recover from that).
        self.query_embed = nnx.Embed(cfg.num_queries, d, rngs=rngs,
                                     embedding_init=nnx.initializers.normal(stddev=1.0))
        self.class_embed = nnx.Linear(d, cfg.num_classes + 1, dtype=dtype, rngs=rngs)
        self.bbox_embed = MLP((d, d, d, 4), dtype, rngs)
        self.position_temperature = cfg.position_temperature

    # The stages below are public so that evaluation can share the backbone between
    # several encoder-attention settings and tests can check each against the reference.
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
        """Project backbone features and run the encoder -> (src, memory, stats), (B, N, d)."""
        src = self.input_proj(features)
        batch, h, w, d = src.shape
        src = src.reshape(batch, h * w, d)
        pos = pos.reshape(batch, h * w, d).astype(src.dtype)
        flat_mask = mask.reshape(batch, h * w)
        memory, stats = self.transformer.encoder(src, pos, flat_mask, rng=rng, train=train)
        return memory, stats

    @uses_matmul_precision
    def decode(self, memory, mask, pos, *, rng=None, train=False):
        """Decoder and heads -> dict of predictions (final and auxiliary)."""
        batch = memory.shape[0]
        flat_mask = mask.reshape(batch, -1)
        flat_pos = pos.reshape(batch, flat_mask.shape[1], -1).astype(memory.dtype)
        hs = self.transformer.decoder(memory, flat_pos, flat_mask, self.query_embed.embedding[...],
                                      rng=rng, train=train)
        logits = self.class_embed(hs).astype(jnp.float32)
        boxes = jax.nn.sigmoid(self.bbox_embed(hs).astype(jnp.float32))
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": logits[i], "pred_boxes": boxes[i]}
                            for i in range(logits.shape[0] - 1)],
        }

    @uses_matmul_precision
    def postprocess(self, outputs, original_sizes):
        """The official PostProcess (softmax, no NMS): outputs, (B, 2) (height, width) ->
        scores (B, Q), labels (B, Q) int32, boxes (B, Q, 4) xyxy in original pixels."""
        from detr_jax.evaluation.postprocess import postprocess_arrays
        scores, labels, boxes = postprocess_arrays(outputs["pred_logits"], outputs["pred_boxes"],
                                                   original_sizes)
        return scores, labels.astype(jnp.int32), boxes

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
        """Multiply-accumulates of one image (``detr_jax.flops.count_flops`` under this
        model's config and encoder attention); see :class:`Detector`."""
        from detr_jax.flops import count_flops
        return count_flops(self.config, tuple(image_hw),
                           valid_hw=None if valid_hw is None else tuple(valid_hw),
                           attention=self.attention_spec, encoder_stats=encoder_stats)

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
