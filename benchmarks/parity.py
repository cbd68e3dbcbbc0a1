"""Parity of the converted DETR-DC5 against the official PyTorch outputs, on any device.

    python benchmarks/parity.py [--precision highest default bf16] [--output parity.json]

Uses the fixture's recipe weights and the trimmed reference vectors in tests/data; prints
max abs errors of pred_logits / pred_boxes, relative-norm errors of the backbone output,
position embedding and encoder memory, and the share of queries whose top class (no-object
included) differs from the official one, per case. ``bf16`` runs the model in bfloat16
(``dtype="bfloat16"``, parameters kept in float32) against the same fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import detr_jax  # noqa: E402
from detr_jax.convert.recipe import recipe_state_dict  # noqa: E402
from detr_jax.models.inference import Forward  # noqa: E402

CASES = {"exact_single": (["image0"], 8), "exact_batch": (["image0", "image1"], 16)}


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def measure(reference, precision: str) -> dict:
    dtype = "bfloat16" if precision == "bf16" else "float32"
    model = detr_jax.load_torch_checkpoint(recipe_state_dict(), dilation=True, dtype=dtype)
    forward = Forward(model, return_intermediates=True)
    results = {}
    with jax.default_matmul_precision("default" if precision == "bf16" else precision):
        for case, (images, step) in CASES.items():
            batch = detr_jax.preprocess([reference[i] for i in images], resize_images=False)
            out = forward(jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask))
            logits = np.asarray(out["pred_logits"], np.float32)
            results[case] = {
                "top_class_changed": float((logits.argmax(-1) != reference[f"{case}/pred_logits"].argmax(-1)).mean()),
                "pred_logits_max_abs": float(np.abs(logits - reference[f"{case}/pred_logits"]).max()),
                "pred_boxes_max_abs": float(np.abs(np.asarray(out["pred_boxes"], np.float32) - reference[f"{case}/pred_boxes"]).max()),
                "backbone_rel": rel(np.asarray(out["backbone"], np.float32).transpose(0, 3, 1, 2)[:, ::step], reference[f"{case}/backbone_ch{step}"]),
                "pos_embed_rel": rel(np.asarray(out["pos_embed"], np.float32).transpose(0, 3, 1, 2), reference[f"{case}/pos_embed"]),
                "memory_rel": rel(np.asarray(out["memory"], np.float32).transpose(1, 0, 2), reference[f"{case}/memory"]),
            }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", nargs="+", default=["highest"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    with np.load(os.path.join(ROOT, "tests", "data", "detr_r50_dc5_official.npz")) as data:
        reference = {k: data[k] for k in data.files}
    report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "results": {}}
    for precision in args.precision:
        report["results"][precision] = measure(reference, precision)
    print(f"device: {report['device']}, jax {report['jax']}")
    print("| precision | case | logits max abs | boxes max abs | backbone rel | pos rel | memory rel "
          "| top class changed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for precision, cases in report["results"].items():
        for case, r in cases.items():
            print(f"| {precision} | {case} | {r['pred_logits_max_abs']:.2e} | {r['pred_boxes_max_abs']:.2e} | "
                  f"{r['backbone_rel']:.2e} | {r['pos_embed_rel']:.2e} | {r['memory_rel']:.2e} | "
                  f"{r['top_class_changed']:.1%} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
