"""SIGTERM (preemption) saves a checkpoint and exits cleanly; a rerun resumes from it."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.multiprocess  # run on their own (scripts/test.sh): they time child processes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_saves_and_exits_cleanly_then_resumes(synthetic_root, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "train.py", "--config", "configs/tiny_train.py", "--workdir", str(tmp_path),
           f"--config.data.train_annotations={synthetic_root}/annotations/instances_train.json",
           f"--config.data.train_images={synthetic_root}/train", "--config.train.num_steps=400",
           "--config.train.checkpoint_every=1000", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # wait until training is under way, then preempt
        lines.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "stopped early by SIGTERM" in output
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    stopped = max(steps)
    assert 3 <= stopped < 400  # saved where it stopped, although the interval is 1000
    resumed = subprocess.run(cmd[:-2] + ["--config.train.num_steps=" + str(stopped + 2), "--no-progress"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"model at step {stopped + 2}" in resumed.stdout
    assert f"step {stopped + 1}/" in resumed.stdout  # continued, did not restart at 1
    assert "step 1/" not in resumed.stdout
