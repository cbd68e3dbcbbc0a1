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

import importlib

# Public names -> defining modules, imported on first use (PEP 562) so that light entry
# points (``--help`` of the scripts) do not import JAX.
_EXPORTS = {
    "ACT": "detr_jax.attention", "ENACT": "detr_jax.attention",
    "AttentionSpec": "detr_jax.attention", "Exact": "detr_jax.attention",
    "KMeans": "detr_jax.attention", "parse_attention": "detr_jax.attention",
    "load_model": "detr_jax.checkpoint", "save_model": "detr_jax.checkpoint",
    "CheckpointError": "detr_jax.convert.errors",
    "load_torch_checkpoint": "detr_jax.convert.load",
    "preprocess": "detr_jax.data.transforms",
    "postprocess": "detr_jax.evaluation.postprocess",
    "DETR": "detr_jax.models", "Detector": "detr_jax.models", "model_config": "detr_jax.models",
    "tiny_model_config": "detr_jax.models", "build_model": "detr_jax.models.build",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detr_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["ACT", "AttentionSpec", "ENACT", "CheckpointError", "DETR", "Detector", "Exact", "KMeans", "build_model",
           "load_model", "load_torch_checkpoint", "model_config", "parse_attention", "postprocess",
           "preprocess", "save_model", "tiny_model_config"]
