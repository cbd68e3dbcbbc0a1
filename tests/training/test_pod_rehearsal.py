"""A TPU pod's training, rehearsed on CPU: 4 processes x 2 devices (jax.distributed on
localhost), the global batch set per device, data from TFDS coco/2017 as array_record
(prepared here from the synthetic training split), a file:// work directory, SIGTERM on one
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
import pytest

import detr_jax
from tests.multiprocess import free_port, skip_unless_multihost
from tests.training.test_multiprocess import flat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [skip_unless_multihost, pytest.mark.multiprocess]
STEPS = 6


@pytest.fixture(scope="module")
def tfds_dir(synthetic_root, tmp_path_factory):
    """The synthetic training split as TFDS coco/2017 (split ``validation``), array_record."""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    from tests.data.tiny_coco import COCO_CATEGORY_NAMES, prepare_tfds_coco
    out = tmp_path_factory.mktemp("pod_tfds")
    coco = out / "coco"  # TFDS's builder wants all 80 COCO categories listed
    (coco / "annotations").mkdir(parents=True)
    dataset = json.load(open(synthetic_root / "annotations" / "instances_train.json"))
    dataset["categories"] = [{"id": c, "name": n, "supercategory": "thing"}
                             for c, n in COCO_CATEGORY_NAMES.items()]
    for a in dataset["annotations"]:
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    json.dump(dataset, open(coco / "annotations" / "instances_train.json", "w"))
    os.symlink(synthetic_root / "train", coco / "train")
    prepare_tfds_coco(str(coco), str(out / "tfds"), split="train")
    return out / "tfds"


def data_flags(tfds_dir):
    return [f"--config.data.train_tfds_dir={tfds_dir}", "--config.data.train_tfds_split=validation"]


def cmd(tfds_dir, workdir, *extra):
    return [sys.executable, "train.py", "--config", "configs/tiny_train.py", "--workdir", workdir,
            *data_flags(tfds_dir), f"--config.train.num_steps={STEPS}",
            "--config.train.per_device_batch=1", "--config.train.checkpoint_every=1000",
            "--no-progress", *extra]


def env(devices):
    out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return out


def start_pod(tfds_dir, workdir, tmp_path, name):
    port = free_port()
    procs, logs = [], []
    for p in range(4):
        log = open(tmp_path / f"{name}{p}.log", "w+")
        procs.append(subprocess.Popen(
            cmd(tfds_dir, workdir, "--coordinator", f"localhost:{port}",
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


def bucket_shapes(tfds_dir, steps):
    from detr_jax.config_cli import load_config_file
    from detr_jax.data.augment import AugmentConfig
    from detr_jax.data.tfds_source import TfdsCocoSource
    from detr_jax.training.cli import training_source
    from detr_jax.training.data import TrainLoader
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    cfg.data.train_tfds_dir, cfg.data.train_tfds_split = str(tfds_dir), "validation"
    source = training_source(cfg.data)
    assert isinstance(source, TfdsCocoSource)  # the array_record source is what trains
    loader = TrainLoader(source, global_batch=8, seed=cfg.train.seed,
                         augment=AugmentConfig.from_data_config(cfg.data),
                         granularity=cfg.data.granularity, max_targets=cfg.train.max_targets)
    return {loader.plan(s)[3] for s in steps}


def test_pod_rehearsal(tfds_dir, tmp_path):
    run = tmp_path / "pod"
    url = f"file://{run}"
    procs, logs = start_pod(tfds_dir, url, tmp_path, "first")
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

    procs, logs = start_pod(tfds_dir, url, tmp_path, "again")
    again = finish(procs, logs)
    assert f"resumed from step {stopped}" in again[0] and f"model at step {STEPS}" in again[0]
    assert compiles(run / "metrics.jsonl") == len(bucket_shapes(tfds_dir, range(stopped, STEPS)))

    one = subprocess.run(cmd(tfds_dir, str(tmp_path / "one")), cwd=ROOT, env=env(8),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "8 devices in 1 processes, global batch 8" in one.stdout
    shapes = bucket_shapes(tfds_dir, range(STEPS))
    assert compiles(tmp_path / "one" / "metrics.jsonl") == len(shapes) > 1

    a, b = flat(detr_jax.load_model(url + "/model")), flat(detr_jax.load_model(str(tmp_path / "one" / "model")))
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
