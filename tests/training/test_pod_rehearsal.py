"""A TPU pod's training, rehearsed on CPU: 4 processes x 2 devices (jax.distributed on
localhost), the global batch set per device, a file:// work directory, SIGTERM on one
process mid-run (every process stops at the same step and saves), a resume; the final
parameters equal one process with all 8 devices, and each run compiled the step once
per padded shape of its batches.

On a 2-core machine the 4 processes finish compiling tens of seconds apart; the trainer's
coordination-service barriers (after each new shape's compile, before the checkpoint
manager's first collective) keep the first gloo collective from timing out, and this test
is what checks them.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np

import detr_jax
from tests.multiprocess import free_port, skip_unless_multihost
from tests.training.test_multiprocess import flat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = skip_unless_multihost
STEPS = 6


def cmd(synthetic_root, workdir, *extra):
    return [sys.executable, "train.py", "--config", "configs/tiny_train.py", "--workdir", workdir,
            f"--config.data.train_annotations={synthetic_root}/annotations/instances_train.json",
            f"--config.data.train_images={synthetic_root}/train", f"--config.train.num_steps={STEPS}",
            "--config.train.per_device_batch=1", "--config.train.checkpoint_every=1000",
            "--no-progress", *extra]


def env(devices):
    out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return out


def start_pod(synthetic_root, workdir, tmp_path, name):
    port = free_port()
    procs, logs = [], []
    for p in range(4):
        log = open(tmp_path / f"{name}{p}.log", "w+")
        procs.append(subprocess.Popen(
            cmd(synthetic_root, workdir, "--coordinator", f"localhost:{port}",
                "--num-processes", "4", "--process-id", str(p)),
            cwd=ROOT, env=env(2), stdout=subprocess.PIPE if p == 0 else log,
            stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    return procs, logs


def finish(procs, logs, first_lines=()):
    out = ["".join(first_lines) + procs[0].communicate(timeout=600)[0]]
    logs[0].write(out[0])
    logs[0].flush()
    for p, log in zip(procs[1:], logs[1:]):
        p.wait(timeout=600)
        log.seek(0)
        out.append(log.read())
    assert all(p.returncode == 0 for p in procs), out
    return out


def compiles(path):
    return [json.loads(line) for line in open(path)][-1]["compiles"]


def bucket_shapes(synthetic_root, steps):
    from detr_jax.config_cli import load_config_file
    from detr_jax.data.augment import AugmentConfig
    from detr_jax.data.coco import CocoSource
    from detr_jax.training.data import TrainLoader
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(f"{synthetic_root}/annotations/instances_train.json", f"{synthetic_root}/train")
    loader = TrainLoader(source, global_batch=8, seed=cfg.train.seed,
                         augment=AugmentConfig.from_data_config(cfg.data),
                         granularity=cfg.data.granularity, max_targets=cfg.train.max_targets)
    return {loader.plan(s)[3] for s in steps}


def test_pod_rehearsal(synthetic_root, tmp_path):
    run = tmp_path / "pod"
    url = f"file://{run}"
    procs, logs = start_pod(synthetic_root, url, tmp_path, "first")
    lines = []
    for line in procs[0].stdout:  # under way: preempt one worker, not process 0
        lines.append(line)
        if line.startswith("step 1/"):
            procs[2].send_signal(signal.SIGTERM)
            break
    first = finish(procs, logs, lines)
    assert f"8 devices in 4 processes, global batch 8, grain" in first[0]
    assert "stopped early by another process's signal" in first[0], first[0]
    stopped = max(int(s) for s in os.listdir(run / "checkpoints") if s.isdigit())
    assert 2 <= stopped < STEPS and (run / "checkpoints" / str(stopped) / "data").is_dir()

    procs, logs = start_pod(synthetic_root, url, tmp_path, "again")
    again = finish(procs, logs)
    assert f"resumed from step {stopped}" in again[0] and f"model at step {STEPS}" in again[0]
    assert compiles(run / "metrics.jsonl") == len(bucket_shapes(synthetic_root, range(stopped, STEPS)))

    one = subprocess.run(cmd(synthetic_root, str(tmp_path / "one")), cwd=ROOT, env=env(8),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "8 devices in 1 processes, global batch 8" in one.stdout
    shapes = bucket_shapes(synthetic_root, range(STEPS))
    assert compiles(tmp_path / "one" / "metrics.jsonl") == len(shapes) > 1

    a, b = flat(detr_jax.load_model(url + "/model")), flat(detr_jax.load_model(str(tmp_path / "one" / "model")))
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
