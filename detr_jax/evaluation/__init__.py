"""Evaluation: post-processing, the evaluation loop (``loop``), its collectors
(``collectors``), COCO scoring (``coco_eval``), the report and its figures."""

from detr_jax.evaluation.postprocess import box_cxcywh_to_xyxy, postprocess, postprocess_arrays

__all__ = ["box_cxcywh_to_xyxy", "postprocess", "postprocess_arrays"]
