"""Training loop: resume equals uninterrupted, damaged checkpoints fall back, non-finite stops."""

import logging
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from detr_jax.config_cli import load_config_file
from detr_jax.data.augment import AugmentConfig
from detr_jax.data.coco import CocoSource
from detr_jax.models.build import build_model
from detr_jax.training.data import TrainLoader
from detr_jax.training.losses import LossWeights
from detr_jax.training.trainer import NonFiniteLoss, Trainer, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(synthetic_root):
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source = CocoSource(str(synthetic_root / "annotations" / "instances_train.json"),
                        str(synthetic_root / "train"))
    return cfg, source, AugmentConfig.from_data_config(cfg.data)


def make(cfg, source, augment):
    loader = TrainLoader(source, global_batch=cfg.train.global_batch, seed=cfg.train.seed,
                         augment=augment, granularity=cfg.data.granularity,
                         max_targets=cfg.train.max_targets, num_workers=2)
    trainer = Trainer(build_model(cfg.model, seed=0), cfg.train, LossWeights(),
                      steps_per_epoch=loader.steps_per_epoch())
    return trainer, loader


def params(trainer):
    return {"/".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(trainer.state["trainable"])}


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    cfg, source, augment = setup
    trainer, loader = make(cfg, source, augment)
    workdir = str(tmp_path_factory.mktemp("full"))
    summary = train(trainer, loader, workdir=workdir, num_steps=4, progress=False)
    assert summary["final_step"] == 4 and trainer.compiles == 1
    return params(trainer), workdir


def test_training_changes_trainable_but_not_frozen_parameters(setup, uninterrupted):
    cfg, source, augment = setup
    trainer, _ = make(cfg, source, augment)
    before = params(trainer)
    after, _ = uninterrupted
    assert not any(k.startswith("backbone/layer1") or k.startswith("backbone/conv1") for k in after)
    unchanged = {k for k in after if np.array_equal(after[k], before[k])}
    # The first decoder layer's self-attention sees tgt = 0, so all its values equal the
    # v bias and its q/k/v kernels get exactly zero gradient (as in the official DETR);
    # every other trainable parameter must move.
    zero_grad = {f"transformer/decoder/layers/0/self_attn/{p}_proj/kernel" for p in "qkv"}
    assert unchanged <= zero_grad


def test_resume_gives_the_same_parameters(setup, uninterrupted, tmp_path):
    cfg, source, augment = setup
    trainer, loader = make(cfg, source, augment)
    first = train(trainer, loader, workdir=str(tmp_path), num_steps=2, progress=False)
    assert first["final_step"] == 2
    trainer, loader = make(cfg, source, augment)  # a fresh process would start like this
    second = train(trainer, loader, workdir=str(tmp_path), num_steps=4, progress=False)
    assert second["final_step"] == 4
    expected, _ = uninterrupted
    resumed = params(trainer)
    for k in expected:
        np.testing.assert_allclose(resumed[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_damaged_latest_checkpoint_falls_back_to_previous(setup, uninterrupted, tmp_path, caplog):
    cfg, source, augment = setup
    _, workdir = uninterrupted
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    latest = copy / "checkpoints" / "4"
    for dirpath, _, files in os.walk(latest):  # damage every data file of the newest step
        for name in files:
            if not name.startswith("_") and "metadata" not in name.lower():
                with open(os.path.join(dirpath, name), "wb") as f:
                    f.write(b"garbage")
    trainer, loader = make(cfg, source, augment)
    with caplog.at_level(logging.WARNING):
        summary = train(trainer, loader, workdir=str(copy), num_steps=4, progress=False)
    assert "step 4" in caplog.text and "falling back" in caplog.text
    assert summary["final_step"] == 4
    expected, _ = uninterrupted
    resumed = params(trainer)
    for k in expected:  # resumed from step 2 and retrained steps 3-4 identically
        np.testing.assert_allclose(resumed[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)


class NaNLoader:
    """Wraps a loader and poisons the pixels of one step's batch."""

    def __init__(self, loader, bad_step):
        self.loader, self.bad_step = loader, bad_step

    def iterate(self, start, num_steps):
        for batch in self.loader.iterate(start, num_steps):
            if batch["step"] == self.bad_step:
                pixels = batch["pixel_values"].astype(np.float32)  # uint8 cannot hold NaN
                batch = dict(batch, pixel_values=np.full_like(pixels, np.nan))
            yield batch


def test_non_finite_loss_stops_with_step_and_images(setup, tmp_path):
    cfg, source, augment = setup
    trainer, loader = make(cfg, source, augment)
    with pytest.raises(NonFiniteLoss, match=r"step 2 .*image ids"):
        train(trainer, NaNLoader(loader, 1), workdir=str(tmp_path), num_steps=4, progress=False)
    assert all(np.isfinite(v).all() for v in params(trainer).values())  # update was skipped


def test_cli_trains_and_evaluates_periodically(synthetic_root, tmp_path):
    """train.py with train.eval_every: COCO metrics of the val split land in metrics.jsonl."""
    import json
    from detr_jax.training.cli import main
    root = str(synthetic_root)
    rc = main(["--config", os.path.join(ROOT, "configs", "tiny_train.py"), "--workdir", str(tmp_path),
               "--no-progress", f"--config.data.train_annotations={root}/annotations/instances_train.json",
               f"--config.data.train_images={root}/train",
               f"--config.data.val_annotations={root}/annotations/instances_val.json",
               f"--config.data.val_images={root}/val", "--config.train.num_steps=2",
               "--config.train.eval_every=2", "--config.train.eval_images=2"])
    assert rc == 0
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals = [line for line in lines if "eval" in line]
    assert [e["step"] for e in evals] == [2]
    assert set(evals[0]["eval"]) == {f"{m}_first2" for m in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")}
    assert all(-1.0 <= v <= 1.0 for v in evals[0]["eval"].values())
    assert os.path.isdir(tmp_path / "model")


def donor_and_config(tmp_path, encoder_attention: str, **train):
    """A saved tiny exact model (``tmp_path/donor``) and a config that starts from it."""
    import ml_collections

    from detr_jax.checkpoint import save_model
    from detr_jax.models.config import tiny_model_config
    from detr_jax.training.defaults import train_config

    donor = build_model(tiny_model_config(num_classes=9), seed=7)
    save_model(donor, str(tmp_path / "donor"))
    train = {key: str(tmp_path / "donor") if value == "donor" else value for key, value in train.items()}
    cfg = ml_collections.ConfigDict(dict(
        model=tiny_model_config(num_classes=9, encoder_attention=encoder_attention),
        train=train_config(seed=0, **train)))
    return donor, cfg


def test_init_backbone_takes_only_the_backbone(tmp_path):
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.training.cli import build_model_from_config

    donor, cfg = donor_and_config(tmp_path, "act:L=8", init_backbone="donor")
    model = build_model_from_config(cfg)
    fresh = build_model(cfg.model, seed=0)
    same = lambda a, b: all(np.array_equal(x, y) for x, y in
                            zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))))
    assert same(model.backbone, donor.backbone) and not same(fresh.backbone, donor.backbone)
    assert same(model.transformer, fresh.transformer) and same(model.query_embed, fresh.query_embed)
    cfg.model.backbone.width = 16
    with pytest.raises(CheckpointError, match="donor"):
        build_model_from_config(cfg)


def test_init_checkpoint_into_enact_keeps_every_saved_variable(tmp_path):
    from detr_jax.checkpoint import load_model_for_finetuning, save_model
    from detr_jax.convert.errors import CheckpointError
    from detr_jax.models.config import tiny_model_config
    from detr_jax.training.cli import build_model_from_config

    donor, cfg = donor_and_config(tmp_path, "enact:sigma=3", init_checkpoint="donor")
    model = build_model_from_config(cfg)
    assert model.config["encoder_attention"] == "enact:sigma=3"
    assert type(model.attention_spec).__name__ == "ENACT"
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    theirs = dict(nnx.to_flat_state(nnx.state(donor)))
    new = [p for p in ours if p not in theirs]
    layers = cfg.model.enc_layers
    assert sorted(new) == sorted(("transformer", "encoder", "layers", i, "self_attn", "entropy", name)
                                 for i in range(layers) for name in ("bias", "kernel"))
    for path, var in theirs.items():
        np.testing.assert_array_equal(np.asarray(ours[path].get_value()), np.asarray(var.get_value()))
    fresh = build_model(cfg.model, seed=0)
    fresh_state = dict(nnx.to_flat_state(nnx.state(fresh)))
    for path in new:  # the new variables keep the seed's initialization
        np.testing.assert_array_equal(np.asarray(ours[path].get_value()),
                                      np.asarray(fresh_state[path].get_value()))
    _, reported = load_model_for_finetuning(str(tmp_path / "donor"), "enact:sigma=3")
    assert sorted(reported) == sorted(new)
    wide = build_model(tiny_model_config(num_classes=10), seed=7)
    save_model(wide, str(tmp_path / "wide"))
    cfg.train.init_checkpoint = str(tmp_path / "wide")
    cfg.model.num_classes = 10
    model = build_model_from_config(cfg)  # the checkpoint's own architecture is used
    assert model.class_embed.kernel.get_value().shape[-1] == 11
    # an ENACT checkpoint has variables an exact model has no place for
    save_model(model, str(tmp_path / "enact"))
    with pytest.raises(CheckpointError, match="entropy"):
        load_model_for_finetuning(str(tmp_path / "enact"), "exact")


def test_the_injected_loss_is_the_one_trained(setup):
    """The trainer calls ``loss_fn`` with the merged model, normalized pixels, the padding
    mask, the targets, the step's key and the assignment, and differentiates its value."""
    from detr_jax.training.losses import detr_loss
    cfg, source, augment = setup
    loader = TrainLoader(source, global_batch=cfg.train.global_batch, seed=cfg.train.seed,
                         augment=augment, granularity=cfg.data.granularity,
                         max_targets=cfg.train.max_targets, num_workers=0)
    batch = loader.batch(0)
    seen = {}

    def doubled(model, pixel_values, padding_mask, targets, *, rng, assign):
        seen.update(pixels=pixel_values.shape, mask=padding_mask.shape,
                    targets=sorted(targets), rng=rng is not None)
        loss, metrics = detr_loss(LossWeights())(model, pixel_values, padding_mask, targets,
                                                 rng=rng, assign=assign)
        return 2 * loss, dict(metrics, loss=2 * loss)

    plain = Trainer(build_model(cfg.model, seed=0), cfg.train, LossWeights())
    twice = Trainer(build_model(cfg.model, seed=0), cfg.train, LossWeights(), loss_fn=doubled)
    a, b = jax.device_get(plain.step(batch)), jax.device_get(twice.step(batch))
    assert seen == {"pixels": batch["pixel_values"].shape, "mask": batch["padding_mask"].shape,
                    "targets": ["boxes", "labels", "valid"], "rng": True}
    np.testing.assert_allclose(float(b["loss"]), 2 * float(a["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(b["grad_norm"]), 2 * float(a["grad_norm"]), rtol=1e-4)


def test_the_step_runs_on_flat_state_leaves(setup, uninterrupted):
    """The compiled step takes and returns plain lists of arrays (no nnx Variables to
    flatten in Python per call); the structured state is rebuilt on demand, once per step,
    and is the one the loop trained (the uninterrupted run's parameters)."""
    cfg, source, augment = setup
    trainer, loader = make(cfg, source, augment)
    for batch in loader.iterate(0, 4):
        trainer.step(batch)
    (compiled,) = trainer._executables.values()
    assert "Variable" not in str(compiled.in_tree) and "Param" not in str(compiled.in_tree)
    state = trainer.state
    assert trainer.state is state and int(state["step"]) == 4
    expected, _ = uninterrupted
    got = params(trainer)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)
    trainer.load_item(trainer.checkpoint_item())  # the setter takes a structured state back
    assert int(trainer.state["step"]) == 4 and trainer.rest is not None


def test_profile_steps_trace_the_loop_phases(setup, tmp_path):
    """``train.profile_steps=(2, 3)`` writes a trace of steps 2 and 3 whose host phases
    benchmarks/train_timeline.py reads back; a reversed window is refused."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from train_timeline import PHASES, timeline

    cfg, source, augment = setup
    trainer, _ = make(cfg, source, augment)
    # one padded shape, so that no step in the window compiles
    loader = TrainLoader(source, global_batch=cfg.train.global_batch, seed=cfg.train.seed,
                         augment=augment, granularity=cfg.data.granularity,
                         max_targets=cfg.train.max_targets, num_workers=2, pad_to=(128, 128))
    trainer.cfg = trainer.cfg.copy_and_resolve_references()
    trainer.cfg.profile_steps = (2, 3)
    train(trainer, loader, workdir=str(tmp_path / "run"), num_steps=4, progress=False)
    result = timeline(str(tmp_path / "run" / "profile"))
    assert result["steps"] == 2  # steps 2 and 3 only
    assert set(result["phases"]) == set(PHASES)
    assert all(p["mean_ms"] > 0 for p in result["phases"].values()) and result["wall_ms"] > 0
    trainer.cfg.profile_steps = (3, 2)
    with pytest.raises(ValueError, match="profile_steps"):
        train(trainer, loader, workdir=str(tmp_path / "bad"), num_steps=4, progress=False)
