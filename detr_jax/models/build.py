"""Build a detector from a config, concretely (random init) or as an empty shell to be loaded.

The class comes from ``cfg.detector`` through :mod:`detr_jax.models.registry`."""

from __future__ import annotations

import json

import jax
from flax import nnx

from detr_jax.models.detector import Detector
from detr_jax.models.registry import detector_class, detector_name
from detr_jax.precision import config_matmul_precision


def build_model(cfg, *, encoder_attention=None, seed: int = 0, abstract: bool = False) -> Detector:
    """The detector ``cfg.detector`` names, for ``cfg``. ``abstract=True`` allocates nothing
    (values are shapes only); use it when every variable is about to be loaded from a
    checkpoint."""
    cls = detector_class(detector_name(cfg))
    config_matmul_precision(cfg)  # a clear error for a bad value, before building
    if abstract:
        graphdef, state = _abstract_split(cls, cfg, encoder_attention, seed)
        # a fresh copy of the Variables: the caller may set values into the shell
        return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    return cls(cfg, encoder_attention=encoder_attention, rngs=nnx.Rngs(seed))


_SHELLS: dict = {}  # (class, config JSON, attention, seed) -> nnx.split of a shape-only build
_MAX_SHELLS = 32


def _abstract_split(cls, cfg, encoder_attention, seed: int):
    """``nnx.split`` of a shape-only ``cls`` for ``cfg``, memoized on the config's values:
    a shape-only build traces every initializer (seconds for a full detector), and an
    evaluation asks for the same shell once per setting and again for FLOPs and plots."""
    # "act:L=32", its spec and (as the config's attention) None share one shell
    from detr_jax.attention import parse_attention
    try:
        encoder_attention = parse_attention(cfg.get("encoder_attention") if encoder_attention
                                            is None else encoder_attention)
    except (TypeError, ValueError):
        pass  # the detector raises its own error when it builds
    build = lambda: nnx.split(nnx.eval_shape(
        lambda: cls(cfg, encoder_attention=encoder_attention, rngs=nnx.Rngs(seed))))
    try:
        key = (cls, json.dumps(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
                               sort_keys=True, default=repr), encoder_attention, seed)
        hash(key)
    except TypeError:  # an unhashable attention spec or config value: no memo
        return build()
    if key not in _SHELLS:
        if len(_SHELLS) >= _MAX_SHELLS:
            _SHELLS.pop(next(iter(_SHELLS)))
        _SHELLS[key] = build()
    return _SHELLS[key]


def unloaded_paths(model: nnx.Module) -> list[tuple]:
    """Paths of variables that still hold abstract shapes (never loaded)."""
    return [path for path, var in nnx.to_flat_state(nnx.state(model))
            if isinstance(var.get_value(), jax.ShapeDtypeStruct)]


def variable_paths(model: nnx.Module) -> list[tuple]:
    """Paths of every variable of the model, in ``nnx.state`` order."""
    return [path for path, _ in nnx.to_flat_state(nnx.state(model))]


def set_variables(model: nnx.Module, values: dict) -> None:
    """Set variables in place from ``{path: array}`` (paths as in ``nnx.state``)."""
    for path, value in values.items():
        target = model
        for part in path[:-1]:
            target = target[part] if isinstance(part, int) else getattr(target, part)
        getattr(target, str(path[-1])).set_value(value)


def with_config(model: Detector, **fields) -> Detector:
    """The same parameters (no copy) behind a detector built from ``model.config`` with
    ``fields`` changed (and the model's encoder attention); for fields that change no
    variable (``attention_backend``, ``matmul_precision``)."""
    from detr_jax.models.config import config_from_dict
    new = build_model(config_from_dict(dict(model.config, **fields)),
                      encoder_attention=getattr(model, "attention_spec", None), abstract=True)
    set_variables(new, {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model))})
    return new


def with_encoder_attention(model: Detector, encoder_attention) -> Detector:
    """The same parameters behind another encoder attention (no copy of the arrays).

    Works for every variant that adds no variables (exact, ACT, K-means); the model
    state must have the same structure under both specs.
    """
    from detr_jax.models.config import config_from_dict
    new = build_model(config_from_dict(model.config), encoder_attention=encoder_attention, abstract=True)
    old_state = nnx.state(model)
    new_paths = set(variable_paths(new))
    old_paths = {path for path, _ in nnx.to_flat_state(old_state)}
    if new_paths != old_paths:
        raise ValueError(f"{encoder_attention!r} changes the model's variables; build it with "
                         "build_model and load the checkpoint instead")
    set_variables(new, {path: var.get_value() for path, var in nnx.to_flat_state(old_state)})
    return new
