"""Evaluation: post-processing, the evaluation loop (``loop``), its collectors
(``collectors``), COCO scoring (``coco_eval``), the report and its figures."""

import importlib

# Public names, imported on first use (PEP 562): the CLIs' --help stays free of JAX.
_EXPORTS = {
    "box_cxcywh_to_xyxy": "detr_jax.evaluation.postprocess",
    "postprocess": "detr_jax.evaluation.postprocess",
    "postprocess_arrays": "detr_jax.evaluation.postprocess",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["box_cxcywh_to_xyxy", "postprocess", "postprocess_arrays"]
