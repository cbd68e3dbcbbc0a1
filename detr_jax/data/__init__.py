"""Data: sources (COCO directory, TFDS, synthetic) behind one interface, the official
transforms, uint8 padding and collation, and the device normalization."""

from detr_jax.data.transforms import Batch, preprocess, resized_size

__all__ = ["Batch", "preprocess", "resized_size"]
