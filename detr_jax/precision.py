"""Precision of float32 matrix products and convolutions (the model config field
``matmul_precision``), separate from the compute dtype (``dtype``: float32 or bfloat16).

=========  ======================================  ==========================================
setting    GPU (Ampere and newer)                  TPU
=========  ======================================  ==========================================
default    TF32 (10-bit mantissa inputs)           one bf16 pass (8-bit mantissa inputs)
high       TF32                                    three bf16 passes (bf16x3, ~fp32 products)
highest    full fp32                               six bf16 passes (fp32)
=========  ======================================  ==========================================

(On GPUs the fused attention kernel, ``detr_jax.attention.flash``, runs ``high`` as three
TF32 passes.) The setting is part of the model's config, hence of its graph definition:
every function that traces the model (the detectors' methods are wrapped by
:func:`uses_matmul_precision`) traces its products under
``jax.default_matmul_precision(setting)``, so each dot and convolution of the compiled
program carries it explicitly (gradients too: their products are transposes of the
forward ones), and models that differ only in it compile separately. ``default`` sets
nothing: the products follow JAX's own setting (``jax_default_matmul_precision``, itself
"default" unless changed, e.g. by a caller's ``with jax.default_matmul_precision(...)``,
which JAX's jit caches key on); :func:`effective_matmul_precision` names the one in force.
"""

from __future__ import annotations

import functools

MATMUL_PRECISIONS = ("default", "high", "highest")


def check_matmul_precision(value, where: str = "matmul_precision") -> str:
    """``value`` if it names a setting, else a ValueError naming ``where``."""
    if value not in MATMUL_PRECISIONS:
        raise ValueError(f"{where}={value!r}: expected one of {', '.join(MATMUL_PRECISIONS)}")
    return value


def config_matmul_precision(config) -> str:
    """The setting of a model config (``"default"`` for configs saved without it)."""
    value = config.get("matmul_precision", "default") if config is not None else "default"
    return check_matmul_precision(value or "default", "model.matmul_precision")


def matmul_precision(setting: str):
    """Context manager: trace float32 products inside it with ``setting`` (``default``:
    leave JAX's setting as it is)."""
    import contextlib

    import jax
    if check_matmul_precision(setting) == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(setting)


def effective_matmul_precision(config) -> str:
    """The precision a model of ``config`` traces with here: its ``matmul_precision``, or
    for ``default`` JAX's current ``jax_default_matmul_precision`` (for cache keys)."""
    import jax
    setting = config_matmul_precision(config)
    if setting != "default":
        return setting
    return str(jax.config.jax_default_matmul_precision or "default")


def uses_matmul_precision(method):
    """Wrap a detector method: it runs under its model config's ``matmul_precision``."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with matmul_precision(config_matmul_precision(self.config)):
            return method(self, *args, **kwargs)
    return wrapped
