"""Data: evaluation transforms (and, later, datasets and pipelines)."""

from detr_jax.data.transforms import Batch, preprocess, resized_size

__all__ = ["Batch", "preprocess", "resized_size"]
