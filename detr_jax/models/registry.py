"""Detector classes by name: ``model.detector`` in a config picks one.

Registration is explicit and in one place (the bottom of this module). A new detector is
one module implementing :class:`detr_jax.models.detector.Detector` plus one
``register_detector`` line here.
"""

from __future__ import annotations

from typing import Callable

DETECTORS: dict[str, type] = {}
CONFIGS: dict[str, Callable] = {}  # name -> its default config function (keyword overrides)

DEFAULT_DETECTOR = "detr"


def register_detector(name: str, cls: type, config: Callable) -> type:
    """Make ``cls`` the detector built for ``model.detector == name``, with ``config``
    (keyword overrides -> ConfigDict) its default configuration; returns ``cls``."""
    if name in DETECTORS and DETECTORS[name] is not cls:
        raise ValueError(f"detector {name!r} is already registered as {DETECTORS[name].__name__}")
    DETECTORS[name] = cls
    CONFIGS[name] = config
    return cls


def detector_name(cfg) -> str:
    """The detector named by a config (ConfigDict or dict); "detr" when it names none."""
    name = cfg.get("detector") if hasattr(cfg, "get") else None
    return name or DEFAULT_DETECTOR


def detector_class(name: str) -> type:
    """The class registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; registered: {sorted(DETECTORS)}") from None


def detector_config(name: str) -> Callable:
    """The default-config function of detector ``name`` (ValueError when unknown)."""
    detector_class(name)
    return CONFIGS[name]


def _register_builtin() -> None:
    from detr_jax.models.anchor_detr import AnchorDETR, anchor_detr_config
    from detr_jax.models.conditional_detr import ConditionalDETR, conditional_detr_config
    from detr_jax.models.config import model_config
    from detr_jax.models.detr import DETR
    register_detector("detr", DETR, model_config)
    register_detector("conditional_detr", ConditionalDETR, conditional_detr_config)
    register_detector("anchor_detr", AnchorDETR, anchor_detr_config)


_register_builtin()
