"""Training checkpoints with Orbax's CheckpointManager: asynchronous saves every N steps,
the last K kept, resume from the newest readable one.

Orbax writes each step to a temporary directory and renames it when complete, so a crash
during a save never damages the last good checkpoint. If the newest checkpoint cannot be
restored (damaged on disk), ``restore_latest`` warns and falls back to the one before.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class TrainCheckpoints:
    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every),
                                                 max_to_keep=keep,
                                                 enable_async_checkpointing=async_save))

    def save(self, step: int, item, *, force: bool = False) -> bool:
        """Save ``item`` at ``step`` if the interval says so (or ``force``); non-blocking."""
        return self.manager.save(step, args=ocp.args.StandardSave(item), force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_item):
        """(step, item) of the newest checkpoint that restores, or (None, None) if none exist."""
        for step in reversed(self.steps()):
            try:
                item = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_item))
                return step, item
            except Exception as err:  # damaged files surface as many error types
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); "
                            "falling back to the previous one", step, self.directory,
                            type(err).__name__, err)
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
