"""Read a checkpoint file (or an in-memory state dict) into numpy arrays with official keys.

Accepted: official DETR ``.pth`` files (``{"model": state_dict}``) and bare state dicts,
``.safetensors`` and ``.npz`` files of the same keys, and the Hugging Face transformers
layouts of the same models (``pytorch_model.bin`` / ``model.safetensors``, timm or native
ResNet backbone names), which are renamed to the official keys. Reading ``.pth``/``.bin``
needs torch (the CPU build is enough); nothing else in the library imports torch.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import numpy as np

from detr_jax.convert.errors import CheckpointError, first


def _to_numpy(key: str, value: Any, source: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        array = tensor.numpy()
    elif hasattr(value, "__array__"):
        array = np.asarray(value)
    else:
        raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return array


def _torch_load(path: str):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading .pth/.bin checkpoints needs torch (CPU build is enough): "
            "pip install 'detr_jax[torch]'") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read the checkpoint (truncated or corrupt?): "
                              f"{type(err).__name__}: {err}") from None


def _load_file(path: str) -> Mapping[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                return _load_file(os.path.join(path, name))
        raise CheckpointError(f"{path}: a directory without model.safetensors or pytorch_model.bin")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
            return load_file(path)
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read the safetensors file: {err}") from None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise CheckpointError(f"{path}: cannot read the .npz file: {err}") from None
    return _torch_load(path)


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, found a {type(obj).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            return obj[wrapper]
    return obj


def read_state_dict(path_or_state_dict: Any) -> tuple[dict[str, np.ndarray], str]:
    """Return (state dict with official DETR keys as float32 numpy arrays, source name)."""
    if isinstance(path_or_state_dict, Mapping):
        raw, source = path_or_state_dict, "<state dict>"
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        raw = _load_file(source)
    else:
        raise TypeError("expected a checkpoint path or a state dict, got "
                        f"{type(path_or_state_dict).__name__}")
    raw = _unwrap(raw, source)
    if not raw:
        raise CheckpointError(f"{source}: the state dict is empty")
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{source}: non-string keys {first(bad)}")
    state = {k: _to_numpy(k, v, source) for k, v in raw.items()}
    from detr_jax.convert import conditional_hf, hf
    if conditional_hf.is_hf_conditional_layout(state):
        state = conditional_hf.hf_conditional_to_official(state, source)
    elif hf.is_hf_layout(state):
        state = hf.hf_to_official(state, source)
    return state, source
