"""Training checkpoints with Orbax's CheckpointManager: asynchronous saves every N steps,
the last K kept, resume from the newest complete and readable one.

Orbax writes each step to a temporary directory and renames it when complete, so a crash
during a save never damages the last good checkpoint. A step folder that is incomplete
(its ``default`` item or its metadata missing) or that cannot be restored (damaged files)
is reported in one warning line, renamed aside to ``<step>.incomplete`` /
``<step>.unreadable`` (never deleted) and the step before it is tried. When steps exist
but none restores, :class:`NoUsableCheckpoint` is raised unless ``start_over`` is set.
"""

from __future__ import annotations

import contextlib
import itertools
import logging

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from detr_jax import paths
from detr_jax.distributed import barrier

log = logging.getLogger(__name__)

ITEM = "default"
DATA_ITEM = "data"
METADATA_FILE = "_CHECKPOINT_METADATA"


class NoUsableCheckpoint(RuntimeError):
    """Checkpoints exist in the directory but none can be restored."""


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax and TensorStore log many lines per damaged checkpoint: keep errors only."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "jax._src.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(err: Exception, limit: int = 160) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(err).__name__}: {text}"


_MANAGERS = itertools.count()


class TrainCheckpoints:
    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = paths.resolve(directory)  # a local path or a URL (gs://...)
        # Orbax's checkpoint manager synchronizes the processes with device collectives
        # (gloo on CPUs gives up after about 30 s): every process must arrive together,
        # however long its model building and data set-up took
        barrier(f"detr_jax_checkpoint_manager_{next(_MANAGERS)}")  # names must not repeat
        self.manager = ocp.CheckpointManager(
            paths.as_path(self.directory) if paths.is_remote(self.directory) else self.directory,
            options=ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every),
                                                 max_to_keep=keep,
                                                 enable_async_checkpointing=async_save),
            item_names=(ITEM, DATA_ITEM))
        self.data_state = None  # the restored step's data item, if it has one

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` (without ``force``) would write a checkpoint."""
        return self.manager.should_save(step)

    def save(self, step: int, item, *, force: bool = False, data: dict | None = None) -> bool:
        """Save ``item`` (and the JSON-able ``data``, the input pipeline's state) at
        ``step`` if the interval says so (or ``force``); non-blocking."""
        args = {ITEM: ocp.args.StandardSave(item)}
        if data is not None:
            args[DATA_ITEM] = ocp.args.JsonSave(data)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def incomplete_reason(self, step: int) -> str | None:
        """Why the folder of ``step`` is not a complete checkpoint, or None if it looks complete."""
        folder = paths.join(self.directory, str(step))
        if not paths.isdir(paths.join(folder, ITEM)):
            return f"no '{ITEM}' item"
        if not paths.exists(paths.join(folder, METADATA_FILE)):
            return f"no {METADATA_FILE}"
        return None

    def set_aside(self, step: int, why: str) -> str | None:
        """Rename the folder of ``step`` to ``<step>.<why>`` (``.<why>-2`` ... if taken) on
        process 0; returns the new path (None on other processes or when renaming fails)."""
        if jax.process_index() != 0:
            return None
        folder = paths.join(self.directory, str(step))
        target, n = f"{folder}.{why}", 1
        while paths.exists(target):
            n += 1
            target = f"{folder}.{why}-{n}"
        try:
            paths.rename(folder, target)
        except OSError as err:
            log.warning("could not set aside %s: %s", folder, err)
            return None
        return target

    def restore_latest(self, abstract_item, *, start_over: bool = False):
        """(step, item) of the newest checkpoint that restores, or (None, None) if there is
        none. Unusable steps are warned about in one line each and set aside; if every
        existing step is unusable, :class:`NoUsableCheckpoint` is raised unless
        ``start_over``."""
        steps = self.steps()
        bad = []
        for step in reversed(steps):
            reason = self.incomplete_reason(step)
            if reason is not None:
                moved = self.set_aside(step, "incomplete")
                log.warning("checkpoint at step %d is incomplete (%s): skipped%s", step, reason,
                            f", moved to {paths.basename(moved)}" if moved else "")
                bad.append(step)
                continue
            try:
                args = {ITEM: ocp.args.StandardRestore(abstract_item)}
                if paths.isdir(paths.join(self.directory, str(step), DATA_ITEM)):
                    args[DATA_ITEM] = ocp.args.JsonRestore()
                with _quiet_orbax():
                    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
                item, self.data_state = restored[ITEM], restored.get(DATA_ITEM)
            except Exception as err:  # damaged files surface as many error types
                moved = self.set_aside(step, "unreadable")
                log.warning("checkpoint at step %d cannot be restored (%s); falling back to the "
                            "previous one%s", step, _first_line(err),
                            f" (moved to {paths.basename(moved)})" if moved else "")
                bad.append(step)
                continue
            if bad:
                self.manager.reload()
            return step, item
        if bad:
            self.manager.reload()
            if not start_over:
                raise NoUsableCheckpoint(
                    f"none of the {len(bad)} checkpoints in {self.directory} (steps "
                    f"{', '.join(map(str, sorted(bad)))}) can be restored; they were moved aside. "
                    "Set train.start_over=True (--config.train.start_over=True) to start "
                    "from step 0")
            log.warning("no checkpoint in %s can be restored: starting over from step 0 "
                        "(train.start_over)", self.directory)
        return None, None

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """Shape/dtype/sharding description of ``tree`` for restoring into the same layout."""
    def describe(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(describe, tree)


@jax.jit
def all_finite(tree) -> jax.Array:
    """One boolean scalar: every floating-point leaf of ``tree`` is finite (no NaN/inf)
    and every boolean leaf (e.g. a step's ``finite`` flag) is all True."""
    leaves = [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.all(x)
              for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact) or x.dtype == jnp.bool_]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
