"""The source interface: every source implements it; training targets; resize once."""

import numpy as np
import pytest
from PIL import Image

from detr_jax.data.coco import CocoSource, Example, annotations_to_arrays
from detr_jax.data.pipeline import iterate_batches, plan_per_device
from detr_jax.data.source import DetectionSource, training_targets
from detr_jax.data.synthetic import SyntheticSource, generate_split, render_image
from detr_jax.data.transforms import resize
from tests.data.tiny_coco import write_tiny_coco


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco_source")
    write_tiny_coco(str(root))
    return CocoSource.from_dir(str(root))


def test_sources_implement_the_interface(coco):
    assert isinstance(coco, DetectionSource)
    assert isinstance(SyntheticSource(2), DetectionSource)
    assert not isinstance(object(), DetectionSource)


def test_load_image_resizes_once_as_the_official_transform(coco):
    for index in range(len(coco)):
        full = coco[index].image
        resized, original = coco.load_image(index, 64, 100)
        assert original == full.shape[:2]
        expected = np.asarray(resize(Image.fromarray(full, "RGB"), 64, 100))
        np.testing.assert_array_equal(resized, expected)
        np.testing.assert_array_equal(coco.load_image(index)[0], full)


def test_training_targets_drop_crowd_and_clip_to_the_image():
    boxes, labels, iscrowd, area, ids = annotations_to_arrays([
        {"id": 9, "bbox": [-5.5, 2.25, 20, 10], "category_id": 3},
        {"id": 2, "bbox": [1, 1, 5, 5], "category_id": 1, "iscrowd": 1},
        {"id": 4, "bbox": [40, 10, 8, 8], "category_id": 2},      # outside: no area left
        {"id": 5, "bbox": [25, 20, 10, 10], "category_id": 4}])
    np.testing.assert_array_equal(ids, [9, 2, 4, 5])  # the file's order
    example = Example(1, "x.jpg", np.zeros((24, 30, 3), np.uint8), boxes, labels, iscrowd,
                      area, ids)
    got_boxes, got_labels = training_targets(example)
    np.testing.assert_array_equal(got_boxes, np.array([[0, 2.25, 14.5, 12.25], [25, 20, 30, 24]],
                                                      np.float32))
    assert got_labels.dtype == np.int32 and got_labels.tolist() == [3, 4]


def test_synthetic_source_renders_the_written_split(tmp_path):
    generate_split(str(tmp_path), "val", 3, seed=5)
    written = CocoSource(str(tmp_path / "annotations" / "instances_val.json"),
                         str(tmp_path / "val"))
    source = SyntheticSource(3, "val", seed=5)
    assert source.image_sizes() == written.image_sizes()
    for index in range(3):
        a, b = source[index], written[index]
        assert (a.image_id, a.file_name) == (b.image_id, b.file_name)
        np.testing.assert_array_equal(a.image, render_image(5, "val", index)[0])
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert len(source.coco.anns) == len(written.coco.anns)
    batches = list(iterate_batches(source, plan_per_device(3, batch_size=2), size=64,
                                   max_size=96, num_workers=0))
    assert [int(i) for b in batches for i in b.image_ids] == [1, 2, 3]
    assert batches[0].pixel_values.dtype == np.uint8
