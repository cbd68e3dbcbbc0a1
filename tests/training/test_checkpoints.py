"""Training checkpoints: incomplete or damaged steps set aside, no checkpoint of non-finite
state, one step numbering, metrics.jsonl cut back on resume, the workdir lock."""

import contextlib
import io
import json
import logging
import os
import shutil
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig
from detr_jax.locks import LOCK_NAME, DirectoryLocked
from detr_jax.training.checkpoints import NoUsableCheckpoint
from detr_jax.data.coco import CocoSource
from detr_jax.training.trainer import NonFiniteLoss, train, truncate_metrics
from tests.training.test_trainer import NaNLoader, make, params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(synthetic_root):
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                             str(synthetic_root / "train"))
    return cfg, source, AugmentConfig.from_data_config(cfg.data)


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    """4 uninterrupted steps, checkpoints at 2 and 4: (parameters, workdir)."""
    trainer, loader = make(*setup)
    workdir = str(tmp_path_factory.mktemp("full"))
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar):
        train(trainer, loader, workdir=workdir, num_steps=4, progress=True)
    return params(trainer), workdir, bar.getvalue()


def test_progress_says_compiling_and_ends_with_a_real_rate(full_run):
    bar = full_run[2]
    assert "train (compiling)" in bar
    final = bar.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("train: 100%") and "4/4" in final
    assert "img_s=" in final and "img_s=0.0" not in final


def steps_in(path):
    return [json.loads(line)["step"] for line in open(path)]


def assert_same(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_incomplete_step_is_set_aside_and_the_previous_restored(setup, full_run, tmp_path,
                                                                caplog, capsys):
    expected, workdir, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    shutil.rmtree(run / "checkpoints" / "4" / "default")  # a step folder without its item
    trainer, loader = make(*setup)
    with caplog.at_level(logging.WARNING):
        summary = train(trainer, loader, workdir=str(run), num_steps=4, progress=False)
    warnings = [r for r in caplog.records if "step 4" in r.getMessage()]
    assert len(warnings) == 1 and "incomplete" in warnings[0].getMessage()
    assert len(warnings[0].getMessage().splitlines()) == 1
    assert "resumed from step 2" in capsys.readouterr().out
    assert summary["start_step"] == 2 and summary["final_step"] == 4
    assert os.path.isdir(run / "checkpoints" / "4.incomplete")  # kept, not deleted
    assert os.path.isdir(run / "checkpoints" / "4" / "default")  # step 4 written again
    assert_same(params(trainer), expected)
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4]  # one line per step


def test_every_checkpoint_damaged_stops_unless_start_over(setup, full_run, tmp_path):
    _, workdir, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    steps = sorted((s for s in os.listdir(run / "checkpoints") if s.isdigit()), key=int)
    assert "2" in steps and "4" in steps
    for step in steps:
        shutil.rmtree(run / "checkpoints" / step / "default")
    trainer, loader = make(*setup)
    with pytest.raises(NoUsableCheckpoint, match=rf"steps {', '.join(steps)}\).*start_over"):
        train(trainer, loader, workdir=str(run), num_steps=4, progress=False)
    assert sorted(os.listdir(run / "checkpoints")) == sorted(f"{s}.incomplete" for s in steps)
    assert not (run / ".detr_jax.lock").exists()  # released on the error
    # a damaged set again, now with start_over: trains from step 0
    for step in steps:
        shutil.copytree(run / "checkpoints" / f"{step}.incomplete", run / "checkpoints" / step)
    cfg, source, augment = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.train.start_over = True
    trainer, loader = make(cfg, source, augment)
    summary = train(trainer, loader, workdir=str(run), num_steps=2, progress=False)
    assert summary["start_step"] == 0 and summary["final_step"] == 2
    assert steps_in(run / "metrics.jsonl") == [1, 2]


def test_no_checkpoint_from_non_finite_parameters(setup, full_run, tmp_path):
    expected, _, _ = full_run
    trainer, loader = make(*setup)
    step = trainer.step

    def overflowing_step(batch):  # step 4's update turns the parameters into inf
        metrics = step(batch)
        if batch["step"] == 3:
            trainer.state = dict(trainer.state, trainable=jax.tree.map(
                lambda x: x * jnp.inf, trainer.state["trainable"]))
        return metrics

    trainer.step = overflowing_step
    with pytest.raises(NonFiniteLoss, match=r"step 4 \(no checkpoint written; the last one "
                                            r"is step 2\).*image ids"):
        train(trainer, loader, workdir=str(tmp_path), num_steps=6, progress=False)
    saved = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert "2" in saved and "4" not in saved
    trainer, loader = make(*setup)  # the rerun resumes from the last finite checkpoint
    summary = train(trainer, loader, workdir=str(tmp_path), num_steps=4, progress=False)
    assert summary["start_step"] == 2
    assert_same(params(trainer), expected)


def test_non_finite_loss_uses_the_progress_numbering(setup, tmp_path, capsys):
    trainer, loader = make(*setup)
    with pytest.raises(NonFiniteLoss, match=r"at step 2 .*image ids") as err:
        train(trainer, NaNLoader(loader, 1), workdir=str(tmp_path), num_steps=4, progress=None)
    printed = capsys.readouterr().out
    assert "step 1/4" in printed and "step 2/4" not in printed  # the second step is the bad one
    assert "step 1 " not in str(err.value)
    assert not os.path.exists(tmp_path / "checkpoints" / "2")  # nothing saved from it


def test_workdir_is_locked_during_training(setup, tmp_path):
    holder = {"pid": 1, "host": socket.gethostname(), "started": 0.0, "purpose": "training"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))  # a live process of this host
    trainer, loader = make(*setup)
    with pytest.raises(DirectoryLocked, match="in use by training .process 1 on host"):
        train(trainer, loader, workdir=str(tmp_path), num_steps=2, progress=False)
    assert not os.path.exists(tmp_path / "checkpoints")  # stopped before touching anything


def test_truncate_metrics_keeps_lines_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1}, {"step": 2}, {"step": 2, "eval": {}}, {"step": 3}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 4, "lo')
    assert truncate_metrics(str(path), 2) == 2
    assert [json.loads(line) for line in open(path)] == lines[:3]
    assert truncate_metrics(str(path), 5) == 0
