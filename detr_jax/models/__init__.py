"""DETR model family in Flax NNX."""

from detr_jax.models.backbone import FrozenBatchNorm, Frozen, ResNet
from detr_jax.models.config import RESNET_STAGES, model_config, tiny_model_config
from detr_jax.models.detector import Detector
from detr_jax.models.detr import DETR
from detr_jax.models.registry import DETECTORS, detector_class, register_detector
from detr_jax.models.position import downsample_mask, nearest_indices, sine_position_embedding

__all__ = ["DETECTORS", "DETR", "Detector", "detector_class", "register_detector", "FrozenBatchNorm", "Frozen", "ResNet", "RESNET_STAGES", "model_config",
           "tiny_model_config", "downsample_mask", "nearest_indices", "sine_position_embedding"]
