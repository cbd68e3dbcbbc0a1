"""Annotation files are checked before any model work; errors name the first bad entry."""

import json
import logging

import pytest

from detr_jax.data.validate import leaves_root, validate_coco


def good():
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
                       {"id": 2, "file_name": "sub/b.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 5]}],
            "categories": [{"id": 3, "name": "cat"}]}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(images="a.jpg"), r"'images' is a str, not a list"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] has no 'file_name'"),
    (lambda d: d["images"][0].update(id="1"), r"images\[0\] has no integer 'id'"),
    (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] has no 'bbox' of four"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, 4]), r"annotations\[0\] has no 'bbox'"),
    (lambda d: d["annotations"][0].update(image_id="1"), r"annotations\[0\] has no integer 'image_id'"),
    (lambda d: d["images"][1].update(file_name="../../etc/passwd"), r"images\[1\].*leaves the image root"),
    (lambda d: d["images"][1].update(file_name="/etc/passwd"), r"images\[1\] .*leaves the image root"),
    (lambda d: d.update(categories={"id": 1}), r"'categories' is a dict"),
])
def test_schema_errors_name_the_first_offending_entry(change, message):
    dataset = good()
    change(dataset)
    with pytest.raises(ValueError, match=r"annotation file x\.json: " + message):
        validate_coco(dataset, "x.json")


def test_soft_problems_are_one_warning_with_counts(caplog):
    dataset = good()
    dataset["images"].append({"id": 2, "file_name": "c.jpg"})
    dataset["annotations"] += [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, -4, 5]},
        {"id": 2, "image_id": 9, "category_id": 7, "bbox": [0, 0, 4, 5]},
        {"id": 3, "image_id": 9, "category_id": 7, "bbox": [0, 0, 4, -1]}]
    with caplog.at_level(logging.WARNING):
        counts = validate_coco(dataset, "x.json")
    assert counts == dict(negative_size=2, undeclared_category=2, unknown_image=2,
                          duplicate_image_id=1, duplicate_annotation_id=1)
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert "2 annotations with a negative box width or height" in text
    assert "1 duplicate image ids" in text and "1 duplicate annotation ids" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        validate_coco(good(), "x.json")
    assert not caplog.records


def test_leaves_root():
    assert leaves_root("../a.jpg") and leaves_root("a/../../b.jpg") and leaves_root("/a.jpg")
    assert not leaves_root("a/../b.jpg") and not leaves_root("sub/a.jpg") and not leaves_root("..a.jpg")


def test_eval_stops_on_a_bad_annotation_file_before_loading_the_model(tmp_path, capsys):
    from detr_jax.evaluation.cli import main
    dataset = good()
    dataset["annotations"][0]["bbox"] = [0, 0, 1]
    (tmp_path / "ann.json").write_text(json.dumps(dataset))
    rc = main(["--checkpoint", str(tmp_path / "no-such-model"), "--annotations",
               str(tmp_path / "ann.json"), "--image-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "annotations[0] has no 'bbox'" in err and "no-such-model" not in err
