"""JAX's persistent compilation cache, shared by training and evaluation: a restarted
run loads its compiled programs from disk instead of compiling them again."""

from __future__ import annotations

import os

import jax

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "detr_jax", "jax_compilation_cache")


def enable_compilation_cache(path: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (``~`` expanded); "none",
    "" or None leave it off. A ``JAX_COMPILATION_CACHE_DIR`` set in the environment wins
    over ``path`` (JAX reads it itself). Returns the directory used."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not path or str(path).lower() in ("none", "off", "false", "0"):
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path
