"""Hugging Face transformers DETR layouts -> official DETR keys (placeholder until written)."""

from __future__ import annotations

import numpy as np


def is_hf_layout(state: dict[str, np.ndarray]) -> bool:
    """True when the keys are those of transformers' DetrForObjectDetection."""
    return any(k.startswith("model.backbone.") or k.startswith("class_labels_classifier.")
               for k in state)


def hf_to_official(state: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    raise NotImplementedError("Hugging Face layout conversion is not written yet")
