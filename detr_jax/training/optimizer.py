"""optax optimizer of the official recipe: AdamW, a lower backbone learning rate,
frozen stem and layer1, global-norm clipping and step decay, all from the config."""

from __future__ import annotations

import optax


def parameter_group(path: tuple, frozen_prefixes, backbone_prefix=("backbone",)) -> str:
    """'frozen', 'backbone' or 'main' for a parameter path such as ('backbone', 'layer1', 0, ...)."""
    names = ".".join(str(p) for p in path)
    if any(names == p or names.startswith(p + ".") for p in frozen_prefixes):
        return "frozen"
    if tuple(path[:len(backbone_prefix)]) == tuple(backbone_prefix):
        return "backbone"
    return "main"


def is_trainable(frozen_prefixes, lr_backbone: float):
    """An nnx filter ``(path, value) -> bool`` for the parameters the optimizer updates."""
    from flax import nnx

    def keep(path, value):
        if not isinstance(value, nnx.Param):
            return False
        group = parameter_group(path, frozen_prefixes)
        return group == "main" or (group == "backbone" and lr_backbone > 0)

    return keep


def learning_rate_schedule(base: float, drop_steps, factor: float = 0.1):
    """Step decay: ``base`` times ``factor`` after each step in ``drop_steps``."""
    return optax.piecewise_constant_schedule(base, {int(s): factor for s in drop_steps if s > 0})


def make_optimizer(params, *, lr: float, lr_backbone: float, weight_decay: float,
                   clip_norm: float, drop_steps=(), drop_factor: float = 0.1):
    """Clip by global norm, then AdamW with per-group learning rates (trainable params only)."""
    import jax
    from flax import nnx

    def label(path, _):
        return "backbone" if parameter_group(path, ()) == "backbone" else "main"

    labels = jax.tree_util.tree_map_with_path(
        lambda kp, leaf: label(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in kp), leaf), params)
    groups = {
        "main": optax.adamw(learning_rate_schedule(lr, drop_steps, drop_factor), weight_decay=weight_decay),
        "backbone": optax.adamw(learning_rate_schedule(lr_backbone, drop_steps, drop_factor),
                                weight_decay=weight_decay),
    }
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
    return optax.chain(*chain, optax.multi_transform(groups, labels))
