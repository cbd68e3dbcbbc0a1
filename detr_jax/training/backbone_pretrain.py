"""Backbone pretraining on object crops: the offline stand-in for ImageNet initialisation.

DETR starts from an ImageNet-pretrained ResNet; trained from random weights its class
head stays at chance for many epochs (the demo model's first runs: cross-entropy of the
matched queries stuck at ln(9) after 24 epochs while the boxes improved). With no
ImageNet offline, the demo model's backbone first learns to classify square crops around
the annotated objects of the training split (global average pooling + a linear layer);
the detector is then trained from that backbone, exactly as DETR from an ImageNet one.

    python -m detr_jax.training.backbone_pretrain --config configs/synthetic_demo.py \\
        --output runs/demo_backbone
    python train.py --config configs/synthetic_demo.py --workdir runs/demo \\
        --config.train.init_backbone=runs/demo_backbone

``--output`` is a full model directory (``save_model``): the pretrained backbone with the
rest of the detector freshly initialised from ``train.seed``. ``train.init_backbone`` takes
only its backbone into the config's model (so an ENACT or any other encoder can start from
it); ``train.init_checkpoint`` would take the whole model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from detr_jax.data.source import training_targets


def object_crop(image: Image.Image, box, size: int, context: float) -> np.ndarray:
    """Square crop of side ``max(w, h) * (1 + context)`` centred on the xyxy ``box``,
    resized to ``size`` x ``size``; parts outside the image are black. -> (size, size, 3) uint8."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + context)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    region = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return np.asarray(image.crop(region).resize((size, size), Image.BILINEAR), np.uint8)


def object_crops(source, *, size: int = 64, context: float = 0.25, workers: int = 8):
    """Every training object of ``source`` (a ``DetectionSource``) as a crop.

    Returns (crops (N, size, size, 3) uint8, labels (N,) int32 category ids).
    """
    def one(index):
        e = source[index]
        boxes, labels = training_targets(e)
        image = Image.fromarray(e.image, "RGB")
        return [object_crop(image, b, size, context) for b in boxes], list(labels)

    crops, labels = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for c, lab in pool.map(one, range(len(source))):
            crops += c
            labels += lab
    if not crops:
        raise ValueError("the training split has no annotated objects to pretrain on")
    return np.stack(crops), np.asarray(labels, np.int32)


def pretrain_backbone(backbone, crops: np.ndarray, labels: np.ndarray, *, num_classes: int,
                      steps: int, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4,
                      seed: int = 0, holdout: float = 0.05, log_every: int = 100) -> dict:
    """Train ``backbone`` (a ``ResNet``, updated in place) with a linear classifier on
    global-average-pooled features: cross-entropy, AdamW with cosine decay, random
    horizontal flips and 90-degree rotations. A ``holdout`` fraction of the crops is kept
    out for accuracy. Returns {"train_loss", "holdout_accuracy", "seconds"}.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from detr_jax.data.normalize import normalize

    class Classifier(nnx.Module):
        def __init__(self, backbone, rngs):
            self.backbone = backbone
            self.head = nnx.Linear(backbone.out_channels, num_classes, rngs=rngs)

        def __call__(self, x):
            return self.head(self.backbone(x).mean(axis=(1, 2)))

    order = np.random.default_rng(seed).permutation(len(crops))
    n_hold = int(len(crops) * holdout)
    hold, train = order[:n_hold], order[n_hold:]
    if len(train) < batch_size:
        raise ValueError(f"{len(train)} training crops are fewer than the batch {batch_size}")
    model = Classifier(backbone, nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
    opt_state = tx.init(params)
    images = jnp.asarray(crops[train])
    targets = jnp.asarray(labels[train])
    no_mask = jnp.zeros(crops.shape[:3], bool)[:1]

    def prepare(x):
        return normalize(x, jnp.broadcast_to(no_mask, x.shape[:3]))

    @jax.jit
    def step(params, opt_state, key):
        k_idx, k_flip, k_rot = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (batch_size,), 0, images.shape[0])
        x, y = images[idx], targets[idx]
        x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (batch_size, 1, 1, 1)), x[:, :, ::-1], x)
        x = jax.lax.switch(jax.random.randint(k_rot, (), 0, 4),
                           [lambda v, k=k: jnp.rot90(v, k, axes=(1, 2)) for k in range(4)], x)

        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(prepare(x))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, x):
        return nnx.merge(graphdef, params)(prepare(x)).argmax(-1)

    start, key, losses = time.time(), jax.random.PRNGKey(seed), []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i))
        if (i + 1) % log_every == 0 or i + 1 == steps:
            losses.append(float(loss))
            print(f"backbone pretraining step {i + 1}/{steps} loss {losses[-1]:.4f}", flush=True)
    correct = 0
    for j in range(0, n_hold, batch_size):
        chunk = hold[j:j + batch_size]
        correct += int((np.asarray(predict(params, jnp.asarray(crops[chunk]))) == labels[chunk]).sum())
    nnx.update(model, params)
    return {"train_loss": losses[-1], "holdout_accuracy": correct / max(n_hold, 1),
            "seconds": time.time() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Pretrain a config's backbone on object crops of its training split and "
                    "write a model directory to start detection training from.",
        epilog="Config fields can be overridden as --config.path.to.field=value.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True, help="model directory to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true")
    args, rest = parser.parse_known_args(argv)
    from detr_jax.config_cli import config_for_parser
    cfg = config_for_parser(parser, args.config, rest)
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    from detr_jax.checkpoint import save_model
    from detr_jax.models.build import build_model
    from detr_jax.data.coco import CocoSource
    try:
        source = CocoSource(cfg.data.train_annotations, cfg.data.train_images)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    crops, labels = object_crops(source, size=args.crop_size)
    print(f"{len(crops)} object crops from {len(source)} images")
    model = build_model(cfg.model, seed=cfg.train.seed)
    stats = pretrain_backbone(model.backbone, crops, labels, num_classes=cfg.model.num_classes + 1,
                              steps=args.steps, batch_size=args.batch, lr=args.lr,
                              seed=cfg.train.seed)
    print(f"held-out accuracy {stats['holdout_accuracy']:.3f} after {stats['seconds']:.0f} s")
    save_model(model, args.output, overwrite=args.overwrite,
               metadata={"backbone_pretraining": dict(stats, steps=args.steps, crops=len(crops),
                                                      config=args.config)})
    print(f"model with the pretrained backbone -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
