"""Deterministic random DETR weights (the reference fixtures' recipe).

For ``index, (name, shape)`` of the official state-dict order, one draw from
``numpy.random.default_rng([seed, index])``: BatchNorm variances and norm scales
``U(0.5, 1.5)``, running means ``N(0, 0.1)``, other 1-D tensors ``N(0, 0.02)``, and
tensors of 2 or more dimensions ``N(0, gain / sqrt(fan_in))`` with gain 2 for
``in_proj_weight``, 0.3 for ``out_proj.weight`` and ``linear2.weight``, 16 (unit variance)
for ``query_embed.weight`` and 1 otherwise. Anchor DETR adds two rules: its anchor points
(a 2-D ``*position.weight`` of shape (N, 2)) are ``U(0, 1)``, its official initial range, and
``pattern.weight`` has unit variance like ``query_embed.weight``. No pretrained weights are
involved.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

SPEC_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                         "detr_r50_dc5_spec.json")


def load_spec(path: str = SPEC_PATH) -> tuple[list[tuple[str, tuple]], int]:
    """The official DETR-R50(-DC5) keys and shapes in state_dict order, and the seed."""
    with open(path) as f:
        spec = json.load(f)
    return [(name, tuple(shape)) for name, shape in spec["state_dict_spec"]], int(spec["seed"])


def _gain(name: str, shape: tuple) -> float:
    if name.endswith("in_proj_weight"):
        return 2.0
    if name.endswith("out_proj.weight") or name.endswith("linear2.weight"):
        return 0.3
    if name.endswith("query_embed.weight") or name.endswith("pattern.weight"):
        return math.sqrt(shape[1])
    return 1.0


def recipe_tensor(name: str, shape: tuple, index: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    if len(shape) == 1:
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("weight"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.02, shape)
    elif name.endswith("position.weight") and len(shape) == 2 and shape[1] == 2:
        value = rng.uniform(0.0, 1.0, shape)
    else:
        fan_in = int(np.prod(shape[1:]))
        value = rng.normal(0.0, _gain(name, shape) / math.sqrt(fan_in), shape)
    return value.astype(np.float32)


def recipe_state_dict(spec=None, seed: int | None = None) -> dict[str, np.ndarray]:
    """The recipe weights as an official-layout state dict of float32 numpy arrays."""
    if spec is None:
        spec, default_seed = load_spec()
        seed = default_seed if seed is None else seed
    return {name: recipe_tensor(name, shape, index, seed)
            for index, (name, shape) in enumerate(spec)}


def recipe_state_for_config(cfg, seed: int = 1) -> dict[str, np.ndarray]:
    """Recipe-style random weights in the official layout for any model config
    (for example a tiny DETR for tests and demos)."""
    from detr_jax.convert.official import expected_official_shapes
    from detr_jax.models.build import build_model
    shapes = expected_official_shapes(build_model(cfg, abstract=True))
    return {name: recipe_tensor(name, shape, index, seed)
            for index, (name, shape) in enumerate(sorted(shapes.items()))}
