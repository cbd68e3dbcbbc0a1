"""Checkpoint conversion: official PyTorch DETR and Hugging Face layouts -> NNX models."""

import importlib

# Public names, imported on first use (PEP 562): the CLIs' --help stays free of JAX.
_EXPORTS = {
    "CheckpointError": "detr_jax.convert.errors",
    "assign_official_state": "detr_jax.convert.official",
    "expected_official_shapes": "detr_jax.convert.official",
    "infer_config": "detr_jax.convert.official",
    "read_state_dict": "detr_jax.convert.reader",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "assign_official_state", "expected_official_shapes",
           "infer_config", "read_state_dict"]
