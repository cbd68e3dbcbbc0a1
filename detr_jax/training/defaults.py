"""Default ``train`` and ``loss`` config sections (the official DETR recipe)."""

from __future__ import annotations

import ml_collections

TRAIN_DEFAULTS = dict(
    seed=0, global_batch=8, epochs=300, num_steps=0,  # num_steps > 0 overrides epochs
    per_device_batch=0,  # > 0: global_batch = per_device_batch x device count (at start-up)
    granularity=0,  # > 0: training batches padded to multiples of it (else data.granularity)
    lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_norm=0.1, lr_drop_epochs=(200,),
    frozen=("backbone.conv1", "backbone.layer1"),  # and every BatchNorm (always frozen)
    max_targets=100, matcher="auto",  # "kernel" on GPUs, "optax" elsewhere; or "scipy" (host callback)
    num_workers=8, prefetch=4, workers="process",  # "process" or "thread" data workers
    pad_to=(),  # (H, W): pad every batch to this shape (one compile); () = batch maximum
    checkpoint_every=1000, keep=3, async_checkpoints=True, log_every=50,
    eval_every=0, eval_images=0, preemption_check_every=10,
    init_checkpoint="",  # a model directory to fine-tune (all of it)
    init_backbone="",  # a model directory whose backbone starts a fresh model (pretraining)
    start_over=False,  # every checkpoint in the workdir unreadable: start at step 0 (else stop)
    compilation_cache="~/.cache/detr_jax/jax_compilation_cache",  # "none" turns it off
    profile_steps=(),  # (first, last): a jax.profiler trace of these steps (1-based, inclusive)
    profile_dir="",  # where the trace goes; "" = <workdir>/profile (a local workdir only)
)
LOSS_DEFAULTS = dict(ce=1.0, bbox=5.0, giou=2.0, eos_coef=0.1, aux=True)


def train_config(**overrides) -> ml_collections.ConfigDict:
    unknown = set(overrides) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown train config fields {sorted(unknown)}")
    return ml_collections.ConfigDict(dict(TRAIN_DEFAULTS, **overrides))


def resolve_global_batch(train_cfg, device_count: int) -> int:
    """``train.global_batch``, set from ``train.per_device_batch`` x ``device_count`` when
    that is given (so one config fits any number of devices and hosts)."""
    if train_cfg.get("per_device_batch", 0):
        train_cfg.global_batch = int(train_cfg.per_device_batch) * int(device_count)
    return int(train_cfg.global_batch)


def training_granularity(cfg) -> int | None:
    """Padding granularity of training batches: ``train.granularity``, else
    ``data.granularity`` (which evaluation uses); None pads to each batch's maximum."""
    return int(cfg.train.get("granularity", 0) or cfg.data.get("granularity", 0)) or None


def loss_config(**overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(LOSS_DEFAULTS, **overrides))
