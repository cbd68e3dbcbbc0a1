"""COCO-format directory and TFDS sources: same examples for the same images."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from detr_jax.data.coco import BadImageError, CocoSource, resolve_paths
from detr_jax.data.tfds_source import example_from_tfds, label_category_ids
from tests.data.tiny_coco import IMAGES, prepare_tfds_coco, write_tiny_coco


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco")
    write_tiny_coco(str(root))
    return str(root)


def test_coco_source_examples(coco_dir):
    source = CocoSource.from_dir(coco_dir)
    assert [r.image_id for r in source.records] == sorted(i[0] for i in IMAGES)
    by_id = {i[0]: i for i in IMAGES}
    for index, record in enumerate(source.records):
        example = source[index]
        image_id, name, (w, h), mode, boxes = by_id[example.image_id]
        assert example.image.shape == (h, w, 3) and example.image.dtype == np.uint8
        with Image.open(os.path.join(coco_dir, "val2017", name)) as im:
            assert im.mode == mode
            np.testing.assert_array_equal(example.image, np.asarray(im.convert("RGB")))
        expected = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh, _, _ in boxes],
                            np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(example.boxes, expected)
        np.testing.assert_array_equal(example.labels, [b[4] for b in boxes])
        np.testing.assert_array_equal(example.iscrowd, [bool(b[5]) for b in boxes])
    assert source.image_sizes()[0] == (120, 160)
    assert len(source[source.records.index(next(r for r in source.records if r.image_id == 23))].boxes) == 0


def test_missing_paths_stop_with_the_path(tmp_path, coco_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_paths(str(tmp_path / "nowhere"))
    ann = os.path.join(coco_dir, "annotations", "instances_val2017.json")
    with pytest.raises(FileNotFoundError, match="instances_val2099.json"):
        resolve_paths(coco_dir, split="val2099")
    with pytest.raises(FileNotFoundError, match="no_images"):
        CocoSource(ann, str(tmp_path / "no_images"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoSource(str(tmp_path / "missing.json"), coco_dir)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        CocoSource(str(tmp_path / "broken.json"), coco_dir)


def test_bad_image_names_path_and_id(tmp_path):
    write_tiny_coco(str(tmp_path))
    (tmp_path / "val2017" / "000000000015.jpg").write_bytes(b"\xff\xd8 truncated")
    os.remove(tmp_path / "val2017" / "000000000042.jpg")
    source = CocoSource.from_dir(str(tmp_path))
    ids = [r.image_id for r in source.records]
    with pytest.raises(BadImageError, match=r"000000000015\.jpg \(id 15\) cannot be decoded"):
        source[ids.index(15)]
    with pytest.raises(BadImageError, match=r"000000000042\.jpg \(id 42\).*does not exist"):
        source[ids.index(42)]


def test_example_from_tfds_record_layout():
    """The documented coco/2017 feature layout -> our Example (no TFDS needed)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    import io
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, format="JPEG")
    names = ["person", "bicycle", "car", "motorcycle"]
    record = {
        "image": buffer.getvalue(), "image/id": 77, "image/filename": b"x.jpg",
        "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], np.float32),
                    "label": np.array([2, 0]), "is_crowd": np.array([False, True]),
                    "area": np.array([120, 2000]), "id": np.array([9, 4])}}
    example = example_from_tfds(record, label_category_ids(names))
    assert example.image_id == 77 and example.image.shape == (40, 50, 3)
    with Image.open(io.BytesIO(buffer.getvalue())) as im:
        np.testing.assert_array_equal(example.image, np.asarray(im.convert("RGB")))
    # sorted by annotation id; COCO category ids; xyxy pixels
    np.testing.assert_array_equal(example.annotation_ids, [4, 9])
    np.testing.assert_array_equal(example.labels, [1, 3])
    np.testing.assert_allclose(example.boxes, [[0, 0, 50, 40], [10, 4, 30, 20]], atol=1e-4)
    np.testing.assert_array_equal(example.iscrowd, [True, False])
    empty = example_from_tfds({**record, "objects": {"bbox": np.zeros((0, 4), np.float32),
                                                     "label": np.zeros(0, np.int64)}},
                              label_category_ids(names))
    assert example.height == 40 and empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_tfds_source_matches_coco_directory(coco_dir, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    prepare_tfds_coco(coco_dir, str(tmp_path / "tfds"))  # reading needs no patch
    from detr_jax.data.tfds_source import TfdsCocoSource
    coco = CocoSource.from_dir(coco_dir)
    tfds_source = TfdsCocoSource(str(tmp_path / "tfds"))
    assert len(tfds_source) == len(coco)
    assert [r.image_id for r in tfds_source.records] == [r.image_id for r in coco.records]
    assert tfds_source.image_sizes() == coco.image_sizes()
    for index in range(len(coco)):
        a, b = coco[index], tfds_source[index]
        assert (a.image_id, a.file_name) == (b.image_id, b.file_name)
        np.testing.assert_array_equal(a.image, b.image)  # grayscale and CMYK included
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.iscrowd, b.iscrowd)
        np.testing.assert_array_equal(a.annotation_ids, b.annotation_ids)
        np.testing.assert_array_equal(np.floor(a.area), b.area)  # TFDS stores int areas
    # ground truth rebuilt from TFDS = the annotation file (up to rounding)
    gt_file, gt_tfds = coco.coco, tfds_source.coco
    assert sorted(gt_file.anns) == sorted(gt_tfds.anns)
    for ann_id, ann in gt_file.anns.items():
        other = gt_tfds.anns[ann_id]
        assert (ann["image_id"], ann["category_id"], ann["iscrowd"]) == (
            other["image_id"], other["category_id"], other["iscrowd"])
        np.testing.assert_allclose(ann["bbox"], other["bbox"], atol=1e-3)
    with_file = TfdsCocoSource(str(tmp_path / "tfds"), annotations=os.path.join(
        coco_dir, "annotations", "instances_val2017.json"))
    assert with_file.coco.dataset["annotations"] == json.load(open(os.path.join(
        coco_dir, "annotations", "instances_val2017.json")))["annotations"]


def test_tfds_source_errors(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from detr_jax.data.tfds_source import TfdsCocoSource
    with pytest.raises(FileNotFoundError, match="absent"):
        TfdsCocoSource(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="coco/2017"):
        TfdsCocoSource(str(tmp_path))
