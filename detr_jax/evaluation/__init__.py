"""Evaluation: post-processing (and, later, COCO evaluation)."""

from detr_jax.evaluation.postprocess import box_cxcywh_to_xyxy, postprocess, postprocess_arrays

__all__ = ["box_cxcywh_to_xyxy", "postprocess", "postprocess_arrays"]
