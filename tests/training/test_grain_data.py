"""The grain pipeline gives the thread loader's batches byte for byte, in threads and in
grain's worker processes, and its iterator state resumes the same order."""

import os

import numpy as np
import pytest

from detr_jax.config_cli import load_config_file
from detr_jax.training.data import TrainLoader
from detr_jax.training.grain_data import GrainTrainLoader, make_train_loader

pytest.importorskip("grain")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = ("pixel_values", "padding_mask", "labels", "boxes", "valid", "image_ids")


def make(cls, source, augment, **kw):
    return cls(source, global_batch=4, seed=3, augment=augment, granularity=32, max_targets=10,
               num_workers=2, **kw)


def assert_same(a, b):
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        assert x["padded_shape"] == y["padded_shape"] and x["epoch"] == y["epoch"]
        for key in KEYS:
            assert x[key].dtype == y[key].dtype
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_grain_batches_are_the_thread_loaders(source_and_augment, workers):
    source, augment = source_and_augment
    # 16 images, 4 per step: steps 2..9 cross into the next epochs
    want = list(make(TrainLoader, source, augment, workers="thread").iterate(2, 10))
    for p in range(2):  # and each process's slice
        got = list(make(GrainTrainLoader, source, augment, workers=workers, process_index=p,
                        process_count=2).iterate(2, 10))
        whole = [dict(w, **{k: w[k][2 * p:2 * p + 2] for k in KEYS}) for w in want]
        assert_same(got, whole)


@pytest.mark.parametrize("workers", ["thread", "process"])
def test_a_restored_iterator_state_continues_the_order(source_and_augment, workers):
    source, augment = source_and_augment
    whole = list(make(GrainTrainLoader, source, augment, workers=workers).iterate(1, 8))
    first = make(GrainTrainLoader, source, augment, workers=workers)
    batches = first.iterate(1, 8)
    seen = [next(batches) for _ in range(3)]  # steps 1..3, then "preempted"
    state = first.get_state()
    batches.close()
    assert state["pipeline"] == "grain" and state["next_step"] == 4 and state["first_step"] == 1
    import json
    state = json.loads(json.dumps(state))  # as a checkpoint stores it
    resumed = make(GrainTrainLoader, source, augment, workers=workers)
    resumed.set_state(state)
    assert_same(seen + list(resumed.iterate(4, 8)), whole)
    wrong = make(GrainTrainLoader, source, augment, workers=workers)
    wrong.set_state(state)
    with pytest.raises(RuntimeError, match="yields step 4, not step 5"):
        next(wrong.iterate(5, 8))


@pytest.mark.parametrize("stop", ["exhausted", "closed early"])
def test_the_worker_processes_stop_with_the_generator_and_the_state_stays(source_and_augment,
                                                                         stop):
    """The grain iterator is closed when the batches end or the consumer closes the
    generator (not left to grain's finalizer at interpreter exit), and the loader's state
    afterwards is the one before."""
    import multiprocessing
    source, augment = source_and_augment
    loader = make(GrainTrainLoader, source, augment, workers="process")
    batches = loader.iterate(1, 4)
    for _ in range(3 if stop == "exhausted" else 2):
        next(batches)
    before = loader.get_state()
    assert multiprocessing.active_children()  # grain's prefetch process
    if stop == "exhausted":
        assert next(batches, None) is None
    else:
        batches.close()
    assert loader.get_state() == before
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]  # stopped


def test_the_pipeline_is_chosen_by_name(source_and_augment):
    source, augment = source_and_augment
    assert type(make(make_train_loader, source, augment, pipeline="auto")) is GrainTrainLoader
    assert type(make(make_train_loader, source, augment, pipeline="threads")) is TrainLoader
    with pytest.raises(ValueError, match="data.pipeline='tf'"):
        make(make_train_loader, source, augment, pipeline="tf")


class _Recording(GrainTrainLoader):
    """Records the state it is given and the steps it yields."""

    given, steps = "unset", []

    def set_state(self, state):
        self.given = state
        super().set_state(state)

    def iterate(self, start_step, num_steps):
        for batch in super().iterate(start_step, num_steps):
            self.steps.append(batch["step"])
            yield batch


def test_training_checkpoints_carry_the_pipeline_state(source_and_augment, tmp_path):
    from detr_jax.models.build import build_model
    from detr_jax.training.checkpoints import TrainCheckpoints
    from detr_jax.training.losses import LossWeights
    from detr_jax.training.trainer import Trainer, train
    cfg = load_config_file(os.path.join(ROOT, "configs", "tiny_train.py"))
    source, augment = source_and_augment

    def run(num_steps):
        loader = _Recording(source, global_batch=cfg.train.global_batch, seed=cfg.train.seed,
                            augment=augment, granularity=cfg.data.granularity,
                            max_targets=cfg.train.max_targets, num_workers=2)
        loader.steps = []
        trainer = Trainer(build_model(cfg.model, seed=0), cfg.train, LossWeights(),
                          steps_per_epoch=loader.steps_per_epoch())
        train(trainer, loader, workdir=str(tmp_path), num_steps=num_steps, progress=False)
        return loader

    first = run(2)
    assert first.given == "unset" and first.steps == [0, 1]  # a fresh start is not restored
    checkpoints = TrainCheckpoints(str(tmp_path / "checkpoints"), save_every=2, keep=3)
    step, _ = checkpoints.restore_latest(None)
    checkpoints.close()
    saved = checkpoints.data_state
    assert step == 2 and saved["pipeline"] == "grain" and saved["next_step"] == 2
    assert saved["first_step"] == 0 and saved["iterator"]  # grain's own iterator state
    second = run(4)
    assert second.given == saved and second.steps == [2, 3]
