"""Training loader: deterministic batches whatever the workers, fixed padding; device
normalization equals the host's bit for bit."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.data.normalize import normalize, normalize_host
from detr_jax.training.data import TrainLoader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loader(source, augment, **kw):
    return TrainLoader(source, global_batch=4, seed=3, augment=augment, granularity=32,
                       max_targets=10, num_workers=2, **kw)


def test_process_workers_give_the_thread_batches(source_and_augment):
    source, augment = source_and_augment
    threads = list(loader(source, augment, workers="thread").iterate(1, 4))
    processes = list(loader(source, augment, workers="process").iterate(1, 4))
    assert [b["step"] for b in processes] == [1, 2, 3]
    for a, b in zip(threads, processes):
        assert a["pixel_values"].dtype == np.uint8
        for key in ("pixel_values", "padding_mask", "labels", "boxes", "valid", "image_ids"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pad_to_fixes_the_shape_and_rejects_what_does_not_fit(source_and_augment):
    source, augment = source_and_augment
    batch = loader(source, augment, pad_to=(160, 192)).batch(0)
    assert batch["pixel_values"].shape[1:3] == (160, 192)
    assert batch["padding_mask"][:, -1, -1].all()
    with pytest.raises(ValueError, match="train.pad_to"):
        loader(source, augment, pad_to=(32, 32)).batch(0)


def test_device_normalization_equals_host_normalization(source_and_augment):
    source, augment = source_and_augment
    batch = loader(source, augment).batch(0)
    device = np.asarray(normalize(jnp.asarray(batch["pixel_values"]),
                                  jnp.asarray(batch["padding_mask"])))
    for i in range(len(device)):
        valid = ~batch["padding_mask"][i]
        h, w = valid.any(1).sum(), valid.any(0).sum()
        np.testing.assert_array_equal(device[i, :h, :w],
                                      normalize_host(batch["pixel_values"][i, :h, :w]))
        assert (device[i][~valid] == 0).all()


def test_processes_pad_their_slices_to_the_global_batch_shape_without_talking(source_and_augment):
    """Each of two processes' slices equals its rows of the one-process batch, at the same
    padded shape, although each sees only its own images."""
    source, augment = source_and_augment
    whole = loader(source, augment)
    parts = [loader(source, augment, process_index=p, process_count=2) for p in range(2)]
    differed = 0
    for step in range(8):
        full = whole.batch(step)
        for p, part in enumerate(parts):
            mine = part.batch(step)
            assert mine["padded_shape"] == full["padded_shape"] == full["pixel_values"].shape[1:3]
            for key in ("pixel_values", "padding_mask", "labels", "boxes", "valid", "image_ids"):
                np.testing.assert_array_equal(mine[key], full[key][2 * p:2 * p + 2], err_msg=key)
        own = [collate_shape(full["padding_mask"][2 * p:2 * p + 2]) for p in range(2)]
        differed += own[0] != own[1]
    assert differed  # some step's slices alone would have padded differently


def collate_shape(mask, granularity=32):
    """The shape a slice would pad to on its own: its largest image, rounded up."""
    valid = ~mask
    h, w = valid.any(2).sum(1).max(), valid.any(1).sum(1).max()
    return (-(-h // granularity) * granularity, -(-w // granularity) * granularity)


class _Sizes:
    """A source whose recorded image sizes are replaced."""

    def __init__(self, source, sizes):
        self.source, self.sizes = source, sizes

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.source[i]

    def image_sizes(self):
        return self.sizes


def test_a_wrong_or_unknown_recorded_size_is_reported(source_and_augment):
    source, augment = source_and_augment
    sizes = source.image_sizes()
    wrong = _Sizes(source, [(h + 7, w) for h, w in sizes])
    with pytest.raises(ValueError, match="image id .* differs from the .* predicted"):
        loader(wrong, augment).batch(0)
    unknown = _Sizes(source, [(0, 0)] * len(sizes))
    with pytest.raises(ValueError, match="unknown: with 2 processes.*train.pad_to"):
        loader(unknown, augment, process_count=2).batch(0)
    one = loader(unknown, augment).batch(0)  # one process: pads to its own images
    np.testing.assert_array_equal(one["pixel_values"], loader(source, augment).batch(0)["pixel_values"])
    fixed = loader(unknown, augment, process_count=2, pad_to=(160, 192)).batch(0)
    assert fixed["padded_shape"] == (160, 192)
