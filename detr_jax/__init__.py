"""detr_jax: DETR in JAX/Flax NNX with efficient encoder attentions (ACT, ENACT).

Public API::

    import detr_jax
    model = detr_jax.load_torch_checkpoint("detr-r50-dc5-f0fb7ef5.pth")
    batch = detr_jax.preprocess(images)              # list of HWC uint8 arrays / PIL images
    outputs = model(batch.pixel_values, batch.padding_mask)
    detections = detr_jax.postprocess(outputs, batch.original_sizes, model=model)

The detector class is chosen by the config field ``model.detector`` ("detr"); see
``detr_jax.models.registry`` and the interface ``detr_jax.models.Detector``.
"""

from detr_jax.attention import ACT, ENACT, AttentionSpec, Exact, KMeans, parse_attention
from detr_jax.checkpoint import load_model, save_model
from detr_jax.convert import CheckpointError
from detr_jax.convert.load import load_torch_checkpoint
from detr_jax.data.transforms import preprocess
from detr_jax.evaluation.postprocess import postprocess
from detr_jax.models import DETR, Detector, model_config, tiny_model_config
from detr_jax.models.build import build_model

__all__ = ["ACT", "AttentionSpec", "ENACT", "CheckpointError", "DETR", "Detector", "Exact", "KMeans", "build_model",
           "load_model", "load_torch_checkpoint", "model_config", "parse_attention", "postprocess",
           "preprocess", "save_model", "tiny_model_config"]
