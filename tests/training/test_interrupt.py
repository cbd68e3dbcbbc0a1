"""Ctrl-C in train.py saves a checkpoint and exits like SIGTERM; a second Ctrl-C aborts at
once; a restart says what it resumed from."""

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.multiprocess  # run on their own (scripts/test.sh): they time child processes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def command(synthetic_root, workdir, steps):
    return [sys.executable, "train.py", "--config", "configs/tiny_train.py", "--workdir", str(workdir),
            f"--config.data.train_annotations={synthetic_root}/annotations/instances_train.json",
            f"--config.data.train_images={synthetic_root}/train", f"--config.train.num_steps={steps}",
            "--config.train.checkpoint_every=1000", "--config.train.compilation_cache=none",
            "--no-progress"]


def interrupt_at_step(cmd, step, signals):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step}/"):
            for _ in range(signals):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
            break
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest


def test_ctrl_c_saves_and_a_restart_resumes(synthetic_root, tmp_path):
    cmd = command(synthetic_root, tmp_path, 400)
    code, output = interrupt_at_step(cmd, 2, 1)
    assert code == 0, output
    assert "Ctrl-C received" in output and "stopped early by Ctrl-C" in output
    assert "Traceback" not in output
    stopped = max(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert 2 <= stopped < 400
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    resumed = subprocess.run(command(synthetic_root, tmp_path, stopped + 1), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step {stopped}" in resumed.stdout
    assert f"step {stopped + 1}/" in resumed.stdout and "step 1/" not in resumed.stdout


def test_second_ctrl_c_aborts_at_once(synthetic_root, tmp_path):
    code, output = interrupt_at_step(command(synthetic_root, tmp_path, 400), 2, 2)
    assert code == 130, output
    assert "aborted by a second Ctrl-C" in output and "Traceback" not in output
    assert not (tmp_path / "model").exists()
    assert not (tmp_path / ".detr_jax.lock").exists()  # released on the way out
