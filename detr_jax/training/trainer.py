"""The training loop: a jitted, sharded step over ``nnx.split`` state, Orbax checkpoints,
resumption, preemption handling and logging.

The global batch is sharded over a 1-D device mesh (axis ``data``) spanning every device
of every process; parameters and optimizer state are replicated. Each process feeds
only its own slice of the global batch. The loss sees the whole global batch, so the box
normalization counts boxes over all devices and hosts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from detr_jax.sharding import replicate
from detr_jax import paths
from detr_jax.distributed import barrier
from detr_jax.data.normalize import normalize
from detr_jax.precision import config_matmul_precision, matmul_precision
from detr_jax.training.checkpoints import TrainCheckpoints, abstract_like, all_finite
from detr_jax.training.losses import LossFn, LossWeights, detr_loss
from detr_jax.training.optimizer import is_trainable, make_optimizer

log = logging.getLogger(__name__)

BATCH_KEYS = ("pixel_values", "padding_mask", "labels", "boxes", "valid")
# how long a process waits for the others to compile a new batch shape (large models on a
# pod can take tens of minutes to compile)
COMPILE_BARRIER_TIMEOUT_S = 3600


def sharded_assign(mesh: Mesh, solver: str):
    """Hungarian assignment of (D, B, Q, T) costs with B sharded over ``data``.

    Under ``shard_map`` every device matches only its own images, so the scipy solver's
    host callback moves one device's costs to its own host (no gather across hosts).
    """
    from detr_jax.training.matcher import SOLVERS, hungarian_match, resolve_solver
    if solver not in SOLVERS:
        raise ValueError(f"train.matcher={solver!r}; choose one of {SOLVERS}")
    solver = resolve_solver(solver, mesh.devices.flat[0].platform)
    spec = P(None, "data")
    return jax.shard_map(lambda cost: hungarian_match(cost, solver), mesh=mesh,
                         in_specs=spec, out_specs=spec, check_vma=False)


class NonFiniteLoss(RuntimeError):
    """The loss or gradients became non-finite; the message names the step and images."""


class Trainer:
    """Holds the model split into (graphdef, trainable, rest), the optimizer and the mesh.

    ``loss_fn`` (a :data:`detr_jax.training.losses.LossFn`) is the training loss; None means
    DETR's (:func:`detr_jax.training.losses.detr_loss` with ``loss_weights``). The step
    computes the loss of one global batch, updates the trainable parameters
    (skipping the update when the loss or gradient norm is not finite) and returns
    scalar metrics. ``compiles`` counts traces of the step.
    """

    def __init__(self, model, train_cfg, loss_weights: LossWeights = LossWeights(), *,
                 steps_per_epoch: int = 1, loss_fn: LossFn | None = None):
        self.cfg = train_cfg
        self.model_config = dict(model.config)
        if train_cfg.max_targets > self.model_config.get("num_queries", train_cfg.max_targets):
            raise ValueError(f"train.max_targets={train_cfg.max_targets} exceeds the model's "
                             f"{self.model_config['num_queries']} queries")
        devices = np.array(jax.devices())
        self.mesh = Mesh(devices, ("data",))
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        frozen = tuple(train_cfg.frozen)
        trainable_filter = is_trainable(frozen, train_cfg.lr_backbone)
        self.graphdef, trainable, rest = nnx.split(model, trainable_filter, ...)
        self.loss_fn = loss_fn if loss_fn is not None else detr_loss(loss_weights)
        drop_steps = [int(e * steps_per_epoch) for e in train_cfg.lr_drop_epochs]
        self.tx = make_optimizer(trainable, lr=train_cfg.lr, lr_backbone=train_cfg.lr_backbone,
                                 weight_decay=train_cfg.weight_decay, clip_norm=train_cfg.clip_norm,
                                 drop_steps=drop_steps)
        self.lr_schedule = optax.piecewise_constant_schedule(
            train_cfg.lr, {s: 0.1 for s in drop_steps if s > 0})
        state = {"trainable": trainable, "opt_state": self.tx.init(trainable),
                 "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(train_cfg.seed)}
        self.state = replicate(state, self.replicated)
        self.rest = replicate(rest, self.replicated)
        self.loss_weights = loss_weights
        self.assign = sharded_assign(self.mesh, train_cfg.get("matcher", "auto"))
        self.compiles = 0
        self._executables = {}
        self._step = jax.jit(self._train_step_leaves, donate_argnums=(0,),
                             in_shardings=(self.replicated, self.replicated, self.batch_sharding),
                             out_shardings=(self.replicated, self.replicated))

    # -- the state, held as flat lists of arrays ----------------------------------------
    # The model's state is a pytree of nnx Variables whose flattening runs in Python: a
    # step call on the structured state (about 1,100 Variables for the demo model with its
    # Adam moments) spent ~25 ms of host time per step flattening and unflattening them,
    # more than the demo's whole device step on two GPUs. The trainer keeps the leaves and
    # rebuilds the structured state only when it is asked for (checkpoints, the model).
    @property
    def state(self):
        """{"trainable", "opt_state", "step", "rng"} as a pytree of nnx state."""
        if self._state_tree is None:
            self._state_tree = jax.tree.unflatten(self._state_def, self._state_leaves)
        return self._state_tree

    @state.setter
    def state(self, tree):
        self._state_leaves, self._state_def = jax.tree.flatten(tree)
        self._state_tree = tree

    @property
    def rest(self):
        """The model's non-trainable state (frozen parameters, buffers)."""
        return jax.tree.unflatten(self._rest_def, self._rest_leaves)

    @rest.setter
    def rest(self, tree):
        self._rest_leaves, self._rest_def = jax.tree.flatten(tree)

    # -- the step ---------------------------------------------------------------------
    def _train_step_leaves(self, state_leaves, rest_leaves, batch):
        """:meth:`_train_step` on flat lists of arrays -> (new state's leaves, metrics)."""
        new_state, metrics = self._train_step(jax.tree.unflatten(self._state_def, state_leaves),
                                              jax.tree.unflatten(self._rest_def, rest_leaves),
                                              batch)
        leaves, treedef = jax.tree.flatten(new_state)
        if treedef != self._state_def:  # trace time only
            raise ValueError("the train step changed the structure of the training state")
        return leaves, metrics

    def _train_step(self, state, rest, batch):
        # the model config's matmul_precision for the products of the loss too (the
        # model's own methods apply it themselves); the config is fixed per Trainer
        with matmul_precision(config_matmul_precision(self.model_config)):
            return self._train_step_body(state, rest, batch)

    def _train_step_body(self, state, rest, batch):
        self.compiles += 1  # trace time only
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        targets = {"labels": batch["labels"], "boxes": batch["boxes"], "valid": batch["valid"]}

        def loss_fn(trainable):
            model = nnx.merge(self.graphdef, trainable, rest)
            pixels = normalize(batch["pixel_values"], batch["padding_mask"])
            return self.loss_fn(model, pixels, batch["padding_mask"], targets, rng=step_rng,
                                assign=self.assign)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        keep = lambda new, old: jnp.where(finite, new, old)
        new_state = {"trainable": jax.tree.map(keep, trainable, state["trainable"]),
                     "opt_state": jax.tree.map(keep, opt_state, state["opt_state"]),
                     "step": state["step"] + 1, "rng": state["rng"]}
        metrics = dict(metrics, grad_norm=grad_norm, finite=finite,
                       num_boxes=batch["valid"].sum())
        return new_state, metrics

    def global_batch(self, local: dict) -> dict:
        """Host-local numpy batch -> global arrays sharded over the data axis.

        The processes do not talk here: each one's rows must already have the padded
        shape of the whole global batch, ``local["padded_shape"]``, which every process
        computes alone from the image sizes (:meth:`TrainLoader.plan
        <detr_jax.training.data.TrainLoader.plan>`). With several processes a batch
        without it, or whose pixels have another shape, is refused.
        """
        shape = tuple(int(v) for v in local["pixel_values"].shape[1:3])
        agreed = local.get("padded_shape")
        if agreed is None and jax.process_count() > 1:
            raise ValueError("with several processes a batch must carry the padded_shape of "
                             "the whole global batch (computed alike by every process, as "
                             "TrainLoader does); this one has none")
        if agreed is not None and tuple(int(v) for v in agreed) != shape:
            raise ValueError(f"process {jax.process_index()}: batch of step "
                             f"{local.get('step')} is padded to {shape}, not to the global "
                             f"batch's agreed {tuple(agreed)}")
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local[k]))
                for k in BATCH_KEYS}

    def executable(self, batch: dict):
        """The step compiled for ``batch``'s shapes (a global batch): compiled ahead of
        its first run, once per shape. With several processes every process then waits
        at a barrier of the coordination service (not a collective, which would time
        out) until all have compiled it, so the step's first collective finds every
        peer ready however far apart their compiles finished."""
        key = tuple((k, batch[k].shape, str(batch[k].dtype)) for k in BATCH_KEYS)
        compiled = self._executables.get(key)
        if compiled is None:
            compiled = self._step.lower(self._state_leaves, self._rest_leaves, batch).compile()
            self._executables[key] = compiled
            shape = "x".join(str(v) for v in batch["pixel_values"].shape)
            barrier(f"detr_jax_step_compiled_{len(self._executables)}_{shape}",
                    COMPILE_BARRIER_TIMEOUT_S)
        return compiled

    def step(self, local_batch: dict):
        """One training step on this process's numpy batch; returns the metrics (on device)."""
        with jax.profiler.TraceAnnotation("train/put"):
            batch = self.global_batch(local_batch)
        return self.step_global(batch)

    def step_global(self, batch: dict):
        """One training step on a global batch (:meth:`global_batch`'s arrays)."""
        executable = self.executable(batch)
        with jax.profiler.TraceAnnotation("train/dispatch"):
            leaves, metrics = executable(self._state_leaves, self._rest_leaves, batch)
        self._state_leaves, self._state_tree = leaves, None
        return metrics

    # -- model access ------------------------------------------------------------------
    def model(self):
        """The current model (shares the trainer's arrays)."""
        return nnx.merge(self.graphdef, self.state["trainable"], self.rest)

    def checkpoint_item(self):
        return {"state": self.state, "rest": self.rest}

    def load_item(self, item):
        self.state = item["state"]
        self.rest = item["rest"]


class _StopSignals:
    """SIGTERM and Ctrl-C (SIGINT) ask the loop to save a checkpoint and stop after the
    current step; a second Ctrl-C aborts at once without saving. Handlers are installed
    only in the main thread and restored by :meth:`restore`.

    The abort does not raise KeyboardInterrupt: Python runs a signal handler wherever the
    main thread happens to be, and an exception raised there can be swallowed (a garbage
    collector callback ignores it) or caught and logged by library code mid-save. Instead
    the handler prints why, calls ``on_abort`` (which releases the work directory's lock)
    and ends the process with exit status 130. Checkpoints are written atomically, so the
    last complete one is kept and an interrupted one is never taken for complete."""

    ABORT_MESSAGE = "aborted by a second Ctrl-C (the last saved checkpoint is kept)"

    def __init__(self, on_abort=None):
        self.requested: str | None = None
        self.previous = {}
        self.on_abort = on_abort
        import threading
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handler)

    def _handler(self, signum, frame):
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if signum == signal.SIGINT and self.requested is not None:
            self._abort()
        self.requested = self.requested or name
        log.warning("%s received: saving a checkpoint and stopping after this step%s", name,
                    " (press Ctrl-C again to abort at once)" if signum == signal.SIGINT else "")

    def _abort(self):
        print(self.ABORT_MESSAGE, file=sys.stderr, flush=True)
        try:
            if self.on_abort is not None:
                self.on_abort()
        finally:
            sys.stdout.flush()
            os._exit(130)

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())


def truncate_metrics(path: str, step: int) -> int:
    """Keep only the lines of ``path`` (metrics.jsonl) whose ``step`` is at most ``step``,
    so a resumed run does not repeat the steps after its checkpoint; returns lines dropped."""
    if not paths.exists(path):
        return 0
    kept, dropped = [], 0
    with paths.open_file(path) as f:
        for line in f:
            try:
                entry_step = int(json.loads(line).get("step", 0))
            except (ValueError, AttributeError, TypeError):
                dropped += 1  # a line cut short by a kill
                continue
            if entry_step <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        paths.write_text(path, "".join(kept))
    return dropped


class _Progress:
    """The console bar: says "compiling" until the first step has returned, then a fresh
    bar whose rate and ETA count only the steps after compilation."""

    def __init__(self, num_steps: int, start: int):
        from tqdm import tqdm
        self._tqdm, self.num_steps = tqdm, num_steps
        self.bar = tqdm(total=num_steps, initial=start, desc="train (compiling)",
                        dynamic_ncols=True, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
        self.compiling = True

    def update(self, done: int):
        if self.compiling:
            self.bar.close()
            self.bar = self._tqdm(total=self.num_steps, initial=done, desc="train",
                                  dynamic_ncols=True)
            self.compiling = False
        else:
            self.bar.update(done - self.bar.n)

    def set_postfix(self, **kwargs):
        self.bar.set_postfix(**kwargs)

    def close(self):
        self.bar.close()


def train(trainer: Trainer, loader, *, workdir: str, num_steps: int,
          eval_fn: Callable | None = None, progress: bool | None = True) -> dict:
    """Run (or resume) training to ``num_steps``; returns the last logged metrics.

    Steps are numbered from 1 everywhere (progress, metrics, errors, checkpoints): step N
    is the state after N updates. Process 0 locks ``workdir`` for the run
    (:class:`detr_jax.locks.DirectoryLock`; a second run stops at once naming the holder).
    Checkpoints go to ``workdir/checkpoints`` every ``cfg.checkpoint_every`` steps (the
    last ``cfg.keep`` kept); only finite parameters and optimizer state are saved (checked
    on device as one scalar, only when a save is due). On SIGTERM or Ctrl-C a checkpoint
    is saved and the loop stops cleanly (a second Ctrl-C aborts at once). On resume
    "resumed from step N" is printed and ``metrics.jsonl`` is cut back to step N; if every
    checkpoint is damaged the run stops (``NoUsableCheckpoint``) unless
    ``cfg.start_over``. The loader's ``get_state()`` (if it has one) is saved with every
    checkpoint and handed back to its ``set_state()`` on resume. Metrics go to the console
    (progress bar), ``workdir/metrics.jsonl`` and TensorBoard event files in ``workdir/tensorboard``; ``progress=None`` prints log
    lines instead of a progress bar (for logs of batch jobs). A non-finite loss raises
    NonFiniteLoss naming the step and image ids.
    """
    from detr_jax.locks import DirectoryLock
    cfg = trainer.cfg
    workdir = paths.resolve(workdir)  # a local path or a URL (gs://bucket/run, file:///...)
    paths.makedirs(workdir)
    is_main = jax.process_index() == 0
    lock = DirectoryLock(workdir, "training").acquire() if is_main else None
    try:
        return _train_locked(trainer, loader, workdir, num_steps, eval_fn, progress, cfg, is_main,
                             on_abort=None if lock is None else lock.release)
    finally:
        if lock is not None:
            lock.release()


class _ProfileWindow:
    """A ``jax.profiler`` trace (Perfetto JSON too) of the steps ``cfg.profile_steps`` =
    (first, last), 1-based and inclusive, into ``cfg.profile_dir`` (default
    ``<workdir>/profile``). The loop's host phases are annotated (``train/next_batch``,
    ``train/put``, ``train/dispatch``, ``train/check``); ``benchmarks/train_timeline.py``
    reads the trace back. Only process 0 traces."""

    def __init__(self, cfg, workdir: str, is_main: bool):
        window = tuple(int(v) for v in (cfg.get("profile_steps") or ()))
        if window and (len(window) != 2 or not 1 <= window[0] <= window[1]):
            raise ValueError(f"train.profile_steps={window}: give (first, last) with "
                             f"1 <= first <= last")
        self.window = window if is_main else ()
        self.directory = cfg.get("profile_dir") or ""
        if self.window and not self.directory:
            if paths.is_remote(workdir):
                raise ValueError("train.profile_steps with a remote workdir needs a local "
                                 "train.profile_dir for the trace")
            self.directory = paths.join(workdir, "profile")
        self.active = False

    def before(self, step: int):
        if self.window and step == self.window[0] and not self.active:
            os.makedirs(self.directory, exist_ok=True)
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 0  # every Python call would flood the trace
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True,
                                     profiler_options=options)
            self.active = True

    def after(self, step: int, metrics):
        if self.active and step == self.window[1]:
            jax.block_until_ready(metrics)
            self.close()
            print(f"profile of steps {self.window[0]}-{self.window[1]} -> {self.directory}",
                  flush=True)

    def close(self):
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


def _train_locked(trainer, loader, workdir, num_steps, eval_fn, progress, cfg, is_main, *,
                  on_abort=None):
    profile = _ProfileWindow(cfg, workdir, is_main)  # checks train.profile_steps first
    checkpoints = TrainCheckpoints(paths.join(workdir, "checkpoints"),
                                   save_every=cfg.checkpoint_every, keep=cfg.keep,
                                   async_save=cfg.async_checkpoints)
    try:
        start, item = checkpoints.restore_latest(abstract_like(trainer.checkpoint_item()),
                                                 start_over=bool(cfg.get("start_over", False)))
    except BaseException:
        checkpoints.close()
        raise
    if item is not None:
        trainer.load_item(item)
        if hasattr(loader, "set_state"):  # None for checkpoints without a data item
            loader.set_state(checkpoints.data_state)
        if is_main:
            print(f"resumed from step {start} ({checkpoints.directory})", flush=True)
    start = start or 0
    metrics_path = paths.join(workdir, "metrics.jsonl")
    if is_main:
        truncate_metrics(metrics_path, start)
        paths.write_text(paths.join(workdir, "model_config.json"),
                         json.dumps(trainer.model_config, indent=2, default=list))
    writer = None
    if is_main:
        try:
            from tensorboardX import SummaryWriter
            writer = SummaryWriter(paths.join(workdir, "tensorboard"))
        except ImportError:
            log.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")
    # appended locally; on object stores re-uploaded whole at most every 30 s and at the end
    metrics_file = paths.AppendLog(metrics_path) if is_main else None
    signals = _StopSignals(on_abort)
    bar = _Progress(num_steps, start) if progress and is_main else None
    pending = []  # (step, image ids, images, metrics on device): checked one step behind
    last = {}
    window_start, window_images = time.perf_counter(), 0

    def check(entry):
        step, image_ids, images, metrics = entry
        values = jax.device_get(metrics)
        if not bool(values["finite"]):
            raise NonFiniteLoss(f"non-finite loss at step {step + 1} (loss {float(values['loss'])}, "
                                f"grad norm {float(values['grad_norm'])}); image ids of this "
                                f"process's batch: {list(map(int, image_ids))}")
        return step, images, values

    def save(done: int, image_ids, metrics, *, force: bool = False):
        """Checkpoint the state after step ``done`` if due (or ``force``) and finite."""
        if not force and not checkpoints.should_save(done):
            return
        ok = bool(all_finite({"state": trainer.state, "finite": metrics["finite"]}))
        if not ok:
            previous = [s for s in checkpoints.steps() if s < done]
            raise NonFiniteLoss(
                f"non-finite loss, parameters or optimizer state at step {done} (no checkpoint "
                f"written; the last one is step {previous[-1] if previous else 'none'}); image "
                f"ids of this process's batch: {list(map(int, image_ids))}")
        checkpoints.save(done, trainer.checkpoint_item(), force=force,
                         data=loader.get_state() if hasattr(loader, "get_state") else None)

    def record(done_step, images, values, epoch):
        nonlocal last, window_start, window_images
        window_images += images
        if (done_step + 1) % cfg.log_every == 0:
            elapsed = time.perf_counter() - window_start
            last = {k: float(v) for k, v in values.items() if k != "finite"}
            last.update(step=done_step + 1, lr=float(trainer.lr_schedule(done_step)),
                        images_per_s=window_images / max(elapsed, 1e-9),
                        step_time_s=elapsed / max(cfg.log_every, 1),
                        compiles=trainer.compiles, epoch=epoch)
            window_start, window_images = time.perf_counter(), 0
            if writer is not None:
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, done_step + 1)
            if metrics_file is not None:
                metrics_file.write(json.dumps(last) + "\n")
                metrics_file.flush()
            if bar is None and is_main and progress is None:
                print(f"step {done_step + 1}/{num_steps} loss {last['loss']:.4f} "
                      f"(ce {last['loss_ce']:.3f} l1 {last['loss_bbox']:.3f} giou "
                      f"{last['loss_giou']:.3f}) lr {last['lr']:.1e} "
                      f"{last['images_per_s']:.1f} img/s compiles {trainer.compiles}", flush=True)
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.1e}",
                                img_s=f"{last['images_per_s']:.1f}", compiles=trainer.compiles)

    stopped_by = None
    current_epoch = 0
    first = True
    metrics, image_ids = None, []
    batches = iter(loader.iterate(start, num_steps))
    try:
        while True:
            with jax.profiler.TraceAnnotation("train/next_batch"):
                batch = next(batches, None)
            if batch is None:
                break
            step, current_epoch = batch["step"], int(batch["epoch"])
            image_ids = batch["image_ids"]
            profile.before(step + 1)
            metrics = trainer.step(batch)
            profile.after(step + 1, metrics)
            if first:  # compiled: rates and ETAs start now
                jax.block_until_ready(metrics)
                window_start, first = time.perf_counter(), False
            pending.append((step, image_ids, len(image_ids) * jax.process_count(), metrics))
            if len(pending) > 1:
                with jax.profiler.TraceAnnotation("train/check"):
                    checked = check(pending.pop(0))
                record(*checked, current_epoch)
            save(step + 1, image_ids, metrics)
            if bar is not None:
                bar.update(step + 1)
            if eval_fn is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                results = {k: v for k, v in (eval_fn(trainer.model(), step + 1) or {}).items()
                           if isinstance(v, (int, float))}
                if writer is not None:
                    for k, v in results.items():
                        writer.add_scalar(f"eval/{k}", v, step + 1)
                if metrics_file is not None:
                    metrics_file.write(json.dumps({"step": step + 1, "eval": results}) + "\n")
                    metrics_file.flush()
                if is_main:
                    log.info("eval at step %d: %s", step + 1,
                             " ".join(f"{k} {v:.4f}" for k, v in results.items()))
            if jax.process_count() == 1:
                stop = signals.requested is not None
            else:  # every process must take part in the same all-gathers: the only
                # communication of the loop besides the step's own collectives, once every
                # train.preemption_check_every steps
                stop = ((step + 1) % max(1, cfg.preemption_check_every) == 0
                        and _any_process(signals.requested is not None))
            if stop:
                while pending:  # never save past a non-finite step
                    record(*check(pending.pop(0)), current_epoch)
                if step + 1 not in checkpoints.steps():  # the regular save may have just run
                    save(step + 1, image_ids, metrics, force=True)
                stopped_by = signals.requested or "another process's signal"
                break
        while pending:
            record(*check(pending.pop(0)), current_epoch)
        final_step = int(trainer.state["step"])
        if final_step not in checkpoints.steps() and metrics is not None:
            save(final_step, image_ids, metrics, force=True)
    finally:
        batches.close()  # the input pipeline's workers stop here, not at interpreter exit
        profile.close()
        signals.restore()
        checkpoints.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if metrics_file is not None:
            metrics_file.close()
    last["stopped_early"] = stopped_by is not None
    last["stopped_by"] = stopped_by
    last["start_step"] = start
    last["final_step"] = int(trainer.state["step"])
    return last
