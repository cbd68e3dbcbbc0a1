"""Evaluation input pipeline: plans, host shards, workers, device placement."""

import jax
import numpy as np
import pytest

from detr_jax.data.coco import CocoSource
from detr_jax.data.pipeline import (host_rows, iterate_batches, make_layout, plan_per_device,
                                    plan_sharded, plan_steps, to_device)
from detr_jax.data.transforms import preprocess
from tests.data.tiny_coco import write_tiny_coco


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco_pipeline")
    write_tiny_coco(str(root))
    return CocoSource.from_dir(str(root))


def test_sharded_plan_is_shared_by_hosts_and_pads_the_last_batch():
    sizes = [(120, 160), (160, 120), (100, 140), (90, 100), (128, 128)]
    steps = plan_sharded(sizes, batch_size=4, granularity=32, rows=range(4), size=96, max_size=160)
    assert [s.indices for s in steps] == [(0, 1, 2, 3), (4, -1, -1, -1)]
    assert steps[0].shape == (128, 160) and steps[1].shape == (96, 96)
    # two hosts with two rows each: same shapes, disjoint rows covering every image once
    host0 = plan_sharded(sizes, batch_size=4, granularity=32, rows=[0, 1], size=96, max_size=160)
    host1 = plan_sharded(sizes, batch_size=4, granularity=32, rows=[2, 3], size=96, max_size=160)
    assert [s.shape for s in host0] == [s.shape for s in host1] == [s.shape for s in steps]
    seen = [i for plan in (host0, host1) for s in plan for i in s.indices if i >= 0]
    assert sorted(seen) == list(range(5))


def test_per_device_plan_splits_hosts_and_devices():
    plans = [plan_per_device(7, batch_size=2, process_index=p, process_count=2, num_devices=2)
             for p in range(2)]
    assert [s.indices for s in plans[0]] == [(0, 2), (4, 6)]
    assert [s.indices for s in plans[1]] == [(1, 3), (5,)]
    assert [s.device for s in plans[0]] == [0, 1]


def test_layouts_over_the_host_devices():
    assert len(jax.devices()) == 4  # tests/conftest.py
    layout = make_layout(32, batch_size=8)
    assert layout.mode == "sharded" and host_rows(layout, 8) == list(range(8))
    with pytest.warns(UserWarning, match="using 2"):
        assert len(make_layout(32, batch_size=6).mesh.devices.flat) == 2
    exact = make_layout(None)
    assert exact.mode == "per_device" and exact.num_devices == 4


@pytest.mark.parametrize("backend", ["grain", "threads"])
def test_batches_match_preprocess_in_order(source, backend):
    if backend == "grain":
        pytest.importorskip("grain")
    layout = make_layout(32, jax.devices()[:2], batch_size=4)
    steps = plan_steps(layout, source, batch_size=4, granularity=32, num_images=len(source),
                       size=96, max_size=160)
    batches = list(iterate_batches(source, steps, size=96, max_size=160, granularity=32,
                                   num_workers=2, prefetch=2, backend=backend))
    assert [b.step.number for b in batches] == [0, 1]
    first = batches[0]
    images = [source[i].image for i in range(4)]
    expected = preprocess(images, size=96, max_size=160, granularity=32)
    assert first.pixel_values.dtype == np.uint8
    np.testing.assert_array_equal(first.padding_mask, expected.padding_mask)
    np.testing.assert_array_equal(first.original_sizes, expected.original_sizes)
    last = batches[1]
    assert list(last.image_ids) == [source.records[4].image_id, -1, -1, -1]
    assert last.padding_mask[1:].all() and last.num_real == 1
    pixels, mask, sizes = to_device(first, layout, 4)
    assert pixels.shape == first.pixel_values.shape and pixels.dtype == np.float32
    assert len(pixels.sharding.device_set) == 2
    # normalized on the devices: the host preprocess bit for bit, 0 on padding
    np.testing.assert_array_equal(np.asarray(pixels), expected.pixel_values)
    np.testing.assert_array_equal(np.asarray(mask), first.padding_mask)


def test_bad_images_skip_or_stop(tmp_path):
    write_tiny_coco(str(tmp_path))
    (tmp_path / "val2017" / "000000000007.jpg").write_bytes(b"garbage")
    source = CocoSource.from_dir(str(tmp_path))
    steps = plan_per_device(len(source), batch_size=2)
    from detr_jax.data.coco import BadImageError
    with pytest.raises(BadImageError, match=r"000000000007\.jpg \(id 7\)"):
        list(iterate_batches(source, steps, size=64, max_size=100, num_workers=2))
    batches = list(iterate_batches(source, steps, size=64, max_size=100, num_workers=2,
                                   skip_bad_images=True))
    skipped = [s for b in batches for s in b.skipped]
    assert [(s[1], s[2].endswith("000000000007.jpg")) for s in skipped] == [(7, True)]
    assert [int(i) for b in batches for i in b.image_ids if i >= 0] == [3, 15, 23, 42]
