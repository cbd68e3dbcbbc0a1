"""Checkpoint conversion: official PyTorch DETR and Hugging Face layouts -> NNX models."""

from detr_jax.convert.errors import CheckpointError
from detr_jax.convert.official import assign_official_state, expected_official_shapes, infer_config
from detr_jax.convert.reader import read_state_dict

__all__ = ["CheckpointError", "assign_official_state", "expected_official_shapes",
           "infer_config", "read_state_dict"]
