"""One process of the two-host CPU evaluation in test_multihost.py (not a test itself).

    python -m tests.evaluation.multihost_worker PROCESS_ID PORT COCO_DIR LAYOUT OUT.json
"""

import json
import os
import sys


def main(process_id: int, port: int, coco_dir: str, layout: str, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id)
    import numpy as np

    import detr_jax
    from detr_jax.convert.recipe import recipe_state_for_config
    from detr_jax.data.coco import CocoSource
    from detr_jax.evaluation.coco_eval import evaluate
    from detr_jax.models.config import tiny_model_config

    model = detr_jax.load_torch_checkpoint(recipe_state_for_config(tiny_model_config()),
                                           num_heads=4)
    source = CocoSource.from_dir(coco_dir)
    sharded = layout == "sharded"
    result = evaluate(model, source, ["exact"], batch_size=4 if sharded else 1,
                      granularity=32 if sharded else 0, size=96, max_size=160, progress=False)
    with open(out, "w") as f:
        json.dump({"image_ids": result.image_ids, "layout": result.layout,
                   "detections": {str(k): [np.asarray(v).tolist() for v in d]
                                  for k, d in result.detections["exact"].items()}}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
