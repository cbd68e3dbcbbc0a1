"""The training input as a grain pipeline, batch for batch the :class:`TrainLoader`'s.

``grain.MapDataset.range(first, stop)`` of step numbers, each mapped to this process's
batch of that step (:meth:`TrainLoader.batch
<detr_jax.training.data.TrainLoader.batch>`: the global batch's indices, this process's
slice, the augmented examples, collated to the global batch's padded shape). Element k is
a pure function of (seed, step), so the batches are those of the thread loader, byte for
byte. ``to_iter_dataset`` prepares ``prefetch`` batches ahead in ``num_workers`` threads;
``workers="process"`` adds grain's multiprocess prefetch (``mp_prefetch``, one batch per
worker at a time), falling back to threads where processes cannot start.

The iterator's state (:meth:`GrainTrainLoader.get_state`: the step the run started from
and grain's own iterator state) goes into every training checkpoint; a resumed run
rebuilds the same dataset and restores the iterator, so it continues the same order.
"""

from __future__ import annotations

import logging

from detr_jax.data.pipeline import grain_available
from detr_jax.training.data import TrainLoader

log = logging.getLogger(__name__)


class _StepBatch:
    """step -> this process's batch of that step (picklable, for grain's workers)."""

    def __init__(self, loader: TrainLoader):
        self.loader = loader

    def __call__(self, step: int) -> dict:
        return self.loader.batch(int(step))


class GrainTrainLoader(TrainLoader):
    """:class:`TrainLoader`'s interface and batches (``iterate(start_step, num_steps)``,
    ``steps_per_epoch()``, ``get_state()``/``set_state()``) from a grain pipeline."""

    pipeline = "grain"

    def __getstate__(self):  # what grain's worker processes receive: no live iterator
        return {k: v for k, v in self.__dict__.items() if k != "_iterator"}

    def _dataset(self, first: int, stop: int):
        import grain
        if not self.pad_to:
            self.image_sizes()  # read once here, not in every worker
        dataset = grain.MapDataset.range(first, max(first, stop)).map(_StepBatch(self))
        iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=self.num_workers,
                                                             prefetch_buffer_size=self.prefetch))
        if self.workers == "process":
            from absl import flags
            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags
                flags.FLAGS.mark_as_parsed()
            try:
                iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
                    num_workers=self.num_workers, per_worker_buffer_size=1))
            except (OSError, RuntimeError, ValueError) as err:
                log.warning("grain's worker processes are unavailable (%s): preparing batches "
                            "in %d threads", err, self.num_workers)
        return iterable

    def iterate(self, start_step: int, num_steps: int):
        """Yield batches for steps [start_step, num_steps). With a state from
        :meth:`set_state` (a checkpoint's) the iterator continues from it; the state must
        lead to ``start_step``."""
        state, self._restored = self._restored, None
        if not (state and state.get("pipeline") == "grain" and "iterator" in state):
            state = None  # a fresh start, or a checkpoint of the thread loader
        first = start_step if state is None else int(state["first_step"])
        iterator = iter(self._dataset(first, num_steps))
        if state is not None:
            try:
                iterator.set_state(state["iterator"])
            except Exception as err:  # e.g. another number of worker processes
                log.warning("the checkpoint's data pipeline state does not fit this pipeline "
                            "(%s): starting it afresh at step %d (same order)", err, start_step)
                first, iterator = start_step, iter(self._dataset(start_step, num_steps))
        self._first, self._iterator, self._final_state = first, iterator, None
        step = start_step
        try:
            for batch in iterator:
                if batch["step"] != step:
                    raise RuntimeError(f"the restored data pipeline state yields step "
                                       f"{batch['step']}, not step {step} of the checkpoint")
                self._next_step = step + 1
                yield batch
                step += 1
                if step >= num_steps:
                    return
        finally:
            self._close(iterator)

    def _close(self, iterator):
        """Stop the worker processes now (on exhaustion, or when the consumer closes or
        drops the generator), keeping the position for :meth:`get_state`. Left to
        interpreter exit, grain's own finalizer runs after multiprocessing has closed
        its queues and fails with tracebacks and leaked shared memory."""
        try:
            self._final_state = iterator.get_state()
        except Exception as err:  # never hide the error that ended the iteration
            log.warning("the data pipeline's position could not be read at its end: %s", err)
        close = getattr(iterator, "close", None)  # the thread fallback has none
        if close is not None:
            close()

    def get_state(self) -> dict:
        """JSON-able position of the pipeline after the batches consumed so far."""
        state = super().get_state()
        if getattr(self, "_iterator", None) is not None:
            iterator_state = (self._final_state if self._final_state is not None
                              else self._iterator.get_state())
            state.update(first_step=self._first, iterator=iterator_state)
        return state


def make_train_loader(source, *, pipeline: str = "auto", **kwargs) -> TrainLoader:
    """A :class:`GrainTrainLoader` (``pipeline="grain"``, or ``"auto"`` when grain is
    installed) or a :class:`TrainLoader` (``"threads"``); ``kwargs`` as TrainLoader's."""
    if pipeline == "auto":
        pipeline = "grain" if grain_available() else "threads"
    if pipeline == "grain":
        if not grain_available():
            raise ValueError("data.pipeline='grain' but grain is not installed (pip install "
                             "grain), or choose data.pipeline='threads'")
        return GrainTrainLoader(source, **kwargs)
    if pipeline == "threads":
        return TrainLoader(source, **kwargs)
    raise ValueError(f"data.pipeline={pipeline!r}: choose 'grain', 'threads' or 'auto'")
