"""Python config files (``get_config()`` -> ConfigDict) with ``--config.a.b=value`` overrides.

Configs live in ``configs/`` as Python files in the JAX habit; any field can be
overridden on the command line as ``--config.path.to.field=value`` (the value is parsed
with the type the field already has; tuples and lists as Python literals or comma lists).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

PREFIX = "--config."


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Execute ``path`` and return its ``get_config()``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"detr_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config()


def _parse_value(text: str, current, field: str):
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--config.{field}: expected a boolean, got {text!r}")
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (tuple, list)):
            value = [value]
        return type(current)(value)
    if current is None or isinstance(current, str):
        if current is None:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    try:
        return type(current)(text)
    except ValueError:
        raise ValueError(f"--config.{field}: expected {type(current).__name__}, got {text!r}") from None


def apply_overrides(cfg: ml_collections.ConfigDict, args: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply ``--config.a.b=value`` (or ``--config.a.b value``) items to ``cfg`` in place."""
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith(PREFIX):
            raise ValueError(f"unrecognized argument {arg!r}")
        field, eq, text = arg[len(PREFIX):].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"{arg}: missing value")
            text = args[i + 1]
            i += 1
        node = cfg
        parts = field.split(".")
        for part in parts[:-1]:
            if part not in node:
                raise ValueError(f"--config.{field}: no field {part!r}; available: {sorted(node.keys())}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ValueError(f"--config.{field}: no field {leaf!r}; available: {sorted(node.keys())}")
        node[leaf] = _parse_value(text, node[leaf], field)
        i += 1
    return cfg


def config_for_parser(parser, path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """``load_config_file(path)`` with ``--config.a.b=value`` overrides applied; a missing
    file or a bad override ends the program through ``parser.error`` (usage + message)."""
    try:
        cfg = load_config_file(path)
        apply_overrides(cfg, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return cfg
