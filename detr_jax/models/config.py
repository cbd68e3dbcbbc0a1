"""Model configuration: an ml_collections ConfigDict with every size of the detector."""

from __future__ import annotations

import ml_collections

RESNET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The official DETR-R50 configuration; keyword arguments override top-level fields.

    Fields:
      detector: the detector class, a name of ``detr_jax.models.registry.DETECTORS``
        (``detr``); saved with checkpoints, and "detr" for checkpoints saved without it.
      backbone.stages: blocks per ResNet stage (3, 4, 6, 3) = R50, (3, 4, 23, 3) = R101.
      backbone.width: channels of the stem (64 for torchvision ResNets); stage i has
        ``width * 2**i`` bottleneck channels and 4x that at its output.
      backbone.dilation: DC5 (dilated last stage, stride 16 instead of 32).
      backbone.bn_eps: BatchNorm (or GroupNorm) epsilon.
      backbone.norm: "frozen_bn" (DETR's, for converted pretrained weights) or "group"
        (trainable GroupNorm with ``norm_groups`` groups, for backbones trained from scratch).
      hidden_dim, num_heads, enc_layers, dec_layers, ffn_dim, dropout: transformer sizes.
      attention_dropout: dropout of the attention probabilities in training (encoder
        self-attention, decoder self- and cross-attention, and the clustered variants'
        attention); None (the default): ``dropout``, as the official code; 0 disables it.
        On the fused GPU kernel it is drawn inside the kernel (``attention_training``
        ``fused``, the default) or moves the call to XLA ops (``xla``; see
        ``detr_jax.attention.backend``).
      pre_norm: pre-norm transformer layers (the official ``--pre_norm``), for training
        from scratch; the official checkpoints are post-norm (False).
      num_queries: object queries; num_classes: highest class id (91 for COCO), the class
        head has ``num_classes + 1`` outputs, the last being no-object.
      encoder_attention: encoder-attention setting string (``exact``, ``act:L=32``, ...).
      attention_backend: softmax-attention kernel, resolved when the model is built
        (``auto``, ``xla``, ``xla_map``, ``flash``, ``cudnn``, ``flash_interpret``,
        ``tpu_flash``, ``tpu_flash_interpret``; ``auto``: ``flash`` on CUDA GPUs,
        ``tpu_flash`` on TPUs, ``xla_map`` on CPUs; see ``detr_jax.attention.backend``).
      attention_key_splits: key ranges per row of the fused kernel: ``auto`` or a
        positive integer, kept as a string (``"2"``; an int given here is converted).
      attention_training: how training calls use the fused GPU kernel: ``fused`` (the
        default: dropout drawn in the kernel, backward kernels) or ``xla`` (attention
        dropout on XLA ops, gradient recomputed with XLA ops; the default before the fused
        backward, kept for comparison; see ``detr_jax.attention.backend``).
      dtype: compute dtype (``float32`` or ``bfloat16``); parameters stay float32.
      matmul_precision: precision of float32 matrix products and convolutions,
        ``default``, ``high`` or ``highest`` (``detr_jax.precision``: TF32 / TF32 / fp32
        on GPUs, 1 / 3 / 6 bf16 passes on TPUs); changes no variable.
    """
    cfg = ml_collections.ConfigDict()
    cfg.detector = "detr"
    cfg.backbone = ml_collections.ConfigDict(
        dict(stages=(3, 4, 6, 3), width=64, dilation=False, bn_eps=1e-5, norm="frozen_bn",
             norm_groups=8))
    cfg.hidden_dim = 256
    cfg.num_heads = 8
    cfg.enc_layers = 6
    cfg.dec_layers = 6
    cfg.ffn_dim = 2048
    cfg.dropout = 0.1
    cfg.attention_dropout = None
    cfg.num_queries = 100
    cfg.num_classes = 91
    cfg.layer_norm_eps = 1e-5
    cfg.pre_norm = False
    cfg.position_temperature = 10000.0
    cfg.encoder_attention = "exact"
    cfg.attention_backend = "auto"
    cfg.attention_key_splits = "auto"
    cfg.attention_training = "fused"
    cfg.dtype = "float32"
    cfg.matmul_precision = "default"
    for key, value in overrides.items():
        if key == "attention_key_splits":
            value = str(value)
        if isinstance(value, dict) and key in cfg and isinstance(cfg[key], ml_collections.ConfigDict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """A model config from a plain dict (``model.config``, a saved ``config.json``): the
    defaults of the detector it names (``detector``, "detr" when absent) updated with it."""
    # the registry imports the detector modules, which import this one
    from detr_jax.models.registry import detector_config, detector_name
    values = dict(values)
    backbone = dict(values.pop("backbone", {}))
    if "stages" in backbone:
        backbone["stages"] = tuple(backbone["stages"])
    return detector_config(detector_name(values))(backbone=backbone, **values)


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    """A very small DETR (same code) for unit tests and CPU demos."""
    base = dict(backbone=dict(stages=(1, 1, 1, 1), width=8, dilation=False), hidden_dim=32,
                num_heads=4, enc_layers=2, dec_layers=2, ffn_dim=64, num_queries=10,
                num_classes=5)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return model_config(**base)


def backbone_channels(cfg) -> int:
    """Channels of the last backbone stage (2048 for ResNet-50/101)."""
    return cfg.backbone.width * 8 * 4
