"""ACT against the official ACT outputs of the fixture, on any device and attention path.

    python benchmarks/act_parity.py [--precision highest] [--output act_parity.json]

The fixture's ``act_single`` case (tests/data): DETR-DC5 R50 with the recipe weights,
ACT with the official hash arrays, one image. For each setting (the attention kernel:
``auto`` = the fused kernels on GPUs, ``xla``; the numbering: ``auto``, ``sort``) it
prints whether the per-head cluster counts of layer 0 equal the official ones, the
largest relative deviation of later layers' counts, and the relative-norm errors of the
encoder memory and ``pred_logits`` against the official ACT outputs (the CPU test
``tests/attention/test_act.py`` asserts 2e-3 and 1e-3).
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
from detr_jax.models.build import with_encoder_attention  # noqa: E402
from detr_jax.convert.recipe import recipe_state_dict  # noqa: E402
from detr_jax.models.inference import Forward  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity import rel  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data", "detr_r50_dc5_official.npz")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="highest", help="jax_default_matmul_precision")
    parser.add_argument("--kernels", default="auto,xla")
    parser.add_argument("--numberings", default="auto,sort")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)
    with np.load(DATA) as data:
        ref = {k: data[k] for k in data.files}
    weights = recipe_state_dict()
    batch = detr_jax.preprocess([ref["image1"]], resize_images=False)
    inputs = jnp.asarray(batch.pixel_values), jnp.asarray(batch.padding_mask)
    expected = ref["act_single/clusters_per_layer_head"]
    memory_ref = ref["act_single/memory"].transpose(1, 0, 2)
    rows = []
    with jax.default_matmul_precision(args.precision):
        for kernel in args.kernels.split(","):
            for numbering in args.numberings.split(","):
                spec = detr_jax.ACT(hash_weights=ref["act_single/hash_weights"],
                                    hash_biases=ref["act_single/hash_biases"],
                                    numbering=numbering)
                model = detr_jax.load_torch_checkpoint(weights, dilation=True,
                                                       encoder_attention=spec)
                model.config["attention_backend"] = kernel  # rebuilt with this backend
                model = with_encoder_attention(model, spec)
                out = Forward(model, return_intermediates=True)(*inputs)
                counts = np.stack([np.asarray(s.num_clusters[0]) for s in out["encoder_stats"]])
                row = dict(kernel=kernel, numbering=numbering, precision=args.precision,
                           device=jax.devices()[0].device_kind,
                           layer0_equal=bool(np.array_equal(counts[0], expected[0])),
                           later_max_rel_dev=float(np.max(np.abs(counts[1:] - expected[1:])
                                                          / expected[1:])),
                           memory_rel_err=rel(out["memory"], memory_ref),
                           logits_rel_err=rel(out["pred_logits"], ref["act_single/pred_logits"]))
                rows.append(row)
                print(row, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
