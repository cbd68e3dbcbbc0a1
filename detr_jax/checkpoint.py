"""Model checkpoints on disk: an Orbax checkpoint of the parameters plus ``config.json``.

A checkpoint directory holds ``config.json`` (the model config) and ``state/`` (Orbax).
Local writes go to a temporary sibling directory that is renamed into place only when
complete, so an interrupted save never leaves a half-written checkpoint. On object stores
(``gs://...``, ``detr_jax.paths``), which cannot rename a directory atomically, the
directory is written in place with ``config.json`` last (Orbax commits ``state/`` itself):
a directory without ``config.json`` is no checkpoint, and a later save may replace it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from detr_jax import paths
from detr_jax.convert.errors import CheckpointError
from detr_jax.models.build import build_model, set_variables, unloaded_paths, variable_paths
from detr_jax.models.config import config_from_dict
from detr_jax.models.registry import detector_class, detector_name

CONFIG_FILE = "config.json"
STATE_DIR = "state"


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _local_checkpointer():
    """An Orbax checkpointer that involves this process only: model directories hold host
    (numpy) arrays and are written by one process, so no cross-process barrier may run."""
    index = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=index, active_processes={index}))


def _flat_arrays(model) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model))}


def is_model_directory(directory: str) -> bool:
    """Whether ``directory`` holds a detr_jax model (``config.json`` with a ``model``
    section and a ``state/`` folder), i.e. something :func:`save_model` may replace."""
    if not paths.isdir(directory) or not paths.isdir(paths.join(directory, STATE_DIR)):
        return False
    try:
        return isinstance(json.loads(paths.read_text(paths.join(directory, CONFIG_FILE)))
                          .get("model"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _is_interrupted_remote_save(directory: str) -> bool:
    """An object-store directory a killed :func:`save_model` left: ``state/`` (or
    nothing) and no ``config.json``."""
    try:
        entries = set(paths.listdir(directory))
    except OSError:
        return False
    return entries <= {STATE_DIR}


def _remove_leftovers(parent: str, name: str):
    """Delete ``<name>.tmp-*`` and ``<name>.old`` folders a killed save left in ``parent``."""
    for entry in os.listdir(parent):
        if entry.startswith(name + ".tmp-") or entry == name + ".old":
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _usual_permissions(path: str):
    """Give a folder made by ``tempfile.mkdtemp`` (0700) the permissions of ``mkdir``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def save_model(model, directory: str, *, overwrite: bool = False, metadata: dict | None = None):
    """Write ``model`` (config and all variables) to ``directory`` atomically.

    With ``overwrite`` only a directory that is a detr_jax model (see
    :func:`is_model_directory`) is replaced; anything else at the path raises
    ``FileExistsError`` naming it. Temporary folders left by a killed save are removed.
    ``directory`` may be a URL (``gs://bucket/model``, ``file:///abs/model``).
    """
    directory = paths.resolve(directory)
    if paths.is_remote(directory):
        return _save_model_remote(model, directory, overwrite=overwrite, metadata=metadata)
    if os.path.lexists(directory):
        if not overwrite:
            raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
        if not is_model_directory(directory):
            kind = "directory" if os.path.isdir(directory) else "file"
            raise FileExistsError(f"{directory} exists and is a {kind} that is not a detr_jax "
                                  "model: refusing to replace it; choose another output path")
    parent = os.path.dirname(directory)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(f"cannot write {directory}: {parent} is a file, not a directory")
    os.makedirs(parent, exist_ok=True)
    _remove_leftovers(parent, os.path.basename(directory))
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        _usual_permissions(tmp)
        config = dict(model.config)
        payload = {"model": _jsonable(config), "metadata": metadata or {}}
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        with _local_checkpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, STATE_DIR), _flat_arrays(model))
        if os.path.exists(directory):
            old = directory + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _save_model_remote(model, directory: str, *, overwrite: bool, metadata: dict | None):
    """:func:`save_model` on an object store: ``config.json`` written last (see the module
    docstring); an existing model loses its ``config.json`` first."""
    if paths.exists(directory):
        interrupted = _is_interrupted_remote_save(directory)
        if not overwrite and not interrupted:
            raise FileExistsError(f"{directory} exists; pass overwrite=True (--overwrite) to replace it")
        if not interrupted and not is_model_directory(directory):
            raise FileExistsError(f"{directory} exists and is not a detr_jax model: refusing "
                                  "to replace it; choose another output path")
        paths.remove(paths.join(directory, CONFIG_FILE))  # from here on: no checkpoint
        paths.rmtree(paths.join(directory, STATE_DIR))
    paths.makedirs(directory)
    with _local_checkpointer() as checkpointer:
        checkpointer.save(paths.as_path(paths.join(directory, STATE_DIR)), _flat_arrays(model))
    payload = {"model": _jsonable(dict(model.config)), "metadata": metadata or {}}
    paths.write_text(paths.join(directory, CONFIG_FILE),
                     json.dumps(payload, indent=2, sort_keys=True))
    return directory


def read_config(directory: str) -> ml_collections.ConfigDict:
    path = paths.join(directory, CONFIG_FILE)
    if not paths.exists(path):
        raise CheckpointError(f"{directory}: not a detr_jax checkpoint (no {CONFIG_FILE})")
    try:
        payload = json.loads(paths.read_text(path))
        model = payload["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable config: {err}") from None
    return config_from_dict(model)


def _check_stored_shapes(directory: str, metadata, target: dict):
    """Raise CheckpointError naming the first variable whose stored shape differs from
    what ``config.json`` describes (or that is missing from the stored state)."""
    stored = getattr(metadata, "item_metadata", metadata)
    try:
        stored = dict(stored.items())
    except AttributeError:
        return  # no per-variable metadata: nothing to compare
    for name, want in target.items():
        have = stored.get(name)
        if have is None:
            raise CheckpointError(f"{directory}: the stored weights lack variable {name}, "
                                  "which the model to load has")
        shape = getattr(have, "shape", None)
        if shape is not None and tuple(shape) != tuple(want.shape):
            raise CheckpointError(f"{directory}: config.json disagrees with the stored weights: "
                                  f"{name} is stored as {tuple(shape)}, the config gives "
                                  f"{tuple(want.shape)}")
    extra = sorted(set(stored) - set(target))
    if extra:
        raise CheckpointError(f"{directory}: the stored weights hold {len(extra)} variables "
                              f"config.json does not describe, e.g. {extra[0]}")


def load_model(directory: str, *, encoder_attention=None, dtype: str | None = None):
    """Load a checkpoint written by :func:`save_model` (or ``convert_torch_weights.py``);
    ``directory`` may be a URL."""
    directory = paths.resolve(directory)
    cfg = read_config(directory)
    if dtype is not None:
        cfg.dtype = dtype
    try:
        detector_class(detector_name(cfg))
    except ValueError as err:
        raise CheckpointError(f"{directory}: {err}") from None
    model = build_model(cfg, encoder_attention=encoder_attention, abstract=True)
    state_dir = paths.join(directory, STATE_DIR)
    if paths.is_remote(state_dir):
        state_dir = paths.as_path(state_dir)
    target = {"/".join(map(str, path)): jax.ShapeDtypeStruct(var.get_value().shape, var.get_value().dtype)
              for path, var in nnx.to_flat_state(nnx.state(model))}
    try:
        with _local_checkpointer() as checkpointer:
            _check_stored_shapes(directory, checkpointer.metadata(state_dir), target)
            arrays = checkpointer.restore(state_dir, target)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{state_dir}: cannot restore the model state: "
                              f"{type(err).__name__}: {err}") from None
    set_variables(model, {path: arrays["/".join(map(str, path))] for path in variable_paths(model)})
    if unloaded_paths(model):
        raise CheckpointError(f"{directory}: some variables were not restored")
    return model


def load_model_for_finetuning(directory: str, encoder_attention: str, *, seed: int = 0):
    """``(model, new_paths)``: the checkpoint's model behind another encoder attention.

    For fine-tuning a trained model into a variant with parameters of its own (ENACT's
    entropy layers): the model is built from the checkpoint's config with
    ``encoder_attention`` (so it saves as that variant), every variable of the checkpoint
    is copied in, and the variables the checkpoint lacks keep their fresh initialization
    from ``seed``; their paths are returned. A shape that differs, or a checkpoint
    variable the new model has no place for, raises :class:`CheckpointError`.
    """
    directory = paths.resolve(directory)
    saved = load_model(directory)
    cfg = read_config(directory)
    cfg.encoder_attention = encoder_attention
    model = build_model(cfg, seed=seed)
    theirs = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(saved))}
    ours = dict(nnx.to_flat_state(nnx.state(model)))
    unused = sorted("/".join(map(str, p)) for p in set(theirs) - set(ours))
    if unused:
        raise CheckpointError(f"{directory}: the model with encoder attention {encoder_attention!r} "
                              f"has no place for {len(unused)} saved variables, e.g. {unused[:3]}")
    for path, value in theirs.items():
        want = ours[path].get_value().shape
        if tuple(value.shape) != tuple(want):
            raise CheckpointError(f"{directory}: variable {'/'.join(map(str, path))} has shape "
                                  f"{tuple(value.shape)}, the model wants {tuple(want)}")
    set_variables(model, theirs)
    return model, [p for p in ours if p not in theirs]
