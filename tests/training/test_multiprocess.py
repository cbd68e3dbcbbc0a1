"""Two CPU processes (jax.distributed on localhost, gloo collectives) train like one process
with the same global batch: the parameters after a few steps agree, and the processes
exchange nothing on the host per step (the padded shape of every global batch is computed
alike by each; only the stop flag is gathered, every train.preemption_check_every steps)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import detr_jax
from tests.multiprocess import free_port, skip_unless_multihost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [skip_unless_multihost, pytest.mark.multiprocess]


def train_cmd(synthetic_root, workdir, *extra, script="train.py"):
    return [sys.executable, script, "--config", "configs/tiny_train.py", "--workdir", str(workdir),
            f"--config.data.train_annotations={synthetic_root}/annotations/instances_train.json",
            f"--config.data.train_images={synthetic_root}/train", "--config.train.num_steps=3",
            "--no-progress", *extra]


def flat(model):
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_two_processes_match_one(synthetic_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port = free_port()
    multi = tmp_path / "two"
    procs = [subprocess.Popen(train_cmd(synthetic_root, multi, "--coordinator", f"localhost:{port}",
                                        "--num-processes", "2", "--process-id", str(p),
                                        "--config.train.preemption_check_every=2",
                                        script="tests/train_counting_gathers.py"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for p in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert "in 2 processes" in logs[0]
    # 3 steps, the stop flag gathered after step 2 only: no all-gather per step
    assert all("training all-gathers: 1\n" in log for log in logs), logs
    # the single process holds the same two devices, so both runs split the global batch
    # the same way and only the transport of the collectives differs (gloo vs in-process)
    one_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    single = subprocess.run(train_cmd(synthetic_root, tmp_path / "one"), cwd=ROOT, env=one_env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    a = flat(detr_jax.load_model(str(multi / "model")))
    b = flat(detr_jax.load_model(str(tmp_path / "one" / "model")))
    from detr_jax.checkpoint import read_config
    initial = flat(detr_jax.build_model(read_config(str(multi / "model")), seed=0))
    # The logged losses and gradient norms agree to float32 rounding at every step ...
    import json
    logs_two = [json.loads(line) for line in open(multi / "metrics.jsonl")]
    logs_one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    assert [r["step"] for r in logs_two] == [r["step"] for r in logs_one] and logs_two
    for r2, r1 in zip(logs_two, logs_one):
        for key in ("loss", "loss_ce", "loss_bbox", "loss_giou", "grad_norm", "num_boxes"):
            np.testing.assert_allclose(r2[key], r1[key], rtol=1e-6, err_msg=key)
    # ... and so do the parameters (bitwise on this machine: the two runs split the global
    # batch the same way and differ only in how the collectives travel)
    moved = 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
        moved += not np.array_equal(a[k], initial[k])
    assert moved > len(a) // 2  # training actually changed the parameters
