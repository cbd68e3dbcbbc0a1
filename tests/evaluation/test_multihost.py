"""Two CPU processes (2 devices each) through jax.distributed = one process.

About 30 s on 2 cores; set DETR_JAX_SKIP_MULTIHOST=1 to skip it locally.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from detr_jax.data.coco import CocoSource
from tests.data.tiny_coco import write_tiny_coco
from tests.multiprocess import free_port, skip_unless_multihost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [skip_unless_multihost, pytest.mark.multiprocess]


@pytest.mark.parametrize("layout", ["sharded", "per_device"])
def test_two_hosts_match_one_process(tmp_path, layout):
    import detr_jax
    from detr_jax.convert.recipe import recipe_state_for_config
    from detr_jax.evaluation.coco_eval import evaluate
    from detr_jax.models.config import tiny_model_config
    coco = tmp_path / "coco"
    write_tiny_coco(str(coco))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.evaluation.multihost_worker", str(p),
                               str(port), str(coco), layout, str(tmp_path / f"out{p}.json")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for p in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    model = detr_jax.load_torch_checkpoint(recipe_state_for_config(tiny_model_config()),
                                           num_heads=4)
    sharded = layout == "sharded"
    single = evaluate(model, CocoSource.from_dir(str(coco)), ["exact"],
                      batch_size=4 if sharded else 1, granularity=32 if sharded else 0,
                      size=96, max_size=160, progress=False, devices=jax.devices()[:1])
    for p in range(2):
        out = json.loads((tmp_path / f"out{p}.json").read_text())
        assert out["image_ids"] == single.image_ids and out["layout"] == layout
        for image_id, detections in single.detections["exact"].items():
            for a, b in zip(detections, out["detections"][str(image_id)]):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
