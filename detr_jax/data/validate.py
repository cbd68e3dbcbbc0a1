"""Checks of a COCO-format annotation file's structure, run before any model work.

:func:`validate_coco` raises ``ValueError`` naming the file and the first offending entry
for problems that would crash later (``images`` not a list, an image without an integer
``id`` or a string ``file_name``, an annotation without an integer ``image_id`` /
``category_id`` / ``id`` or with a ``bbox`` that is not four numbers, a ``file_name`` that
leaves the image root). Softer problems (boxes of negative width or height, categories the
file does not declare, annotations of images the file does not list, duplicate image or
annotation ids) are reported in one warning with their counts.
"""

from __future__ import annotations

import logging
import numbers
import os

log = logging.getLogger(__name__)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def leaves_root(file_name: str) -> bool:
    """Whether joining ``file_name`` to an image root can point outside it (absolute path,
    drive, or ``..`` steps that climb above the root)."""
    if os.path.isabs(file_name) or os.path.splitdrive(file_name)[0]:
        return True
    normal = os.path.normpath(file_name.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def _list(dataset: dict, key: str, source: str, required: bool) -> list:
    if key not in dataset:
        if required:
            raise ValueError(f"annotation file {source}: no '{key}' list")
        return []
    value = dataset[key]
    if not isinstance(value, list):
        raise ValueError(f"annotation file {source}: '{key}' is a {type(value).__name__}, "
                         "not a list")
    return value


def _entry_error(source: str, key: str, index: int, entry, problem: str) -> ValueError:
    shown = repr(entry)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    return ValueError(f"annotation file {source}: {key}[{index}] {problem}: {shown}")


def validate_coco(dataset, source: str) -> dict:
    """Check a loaded COCO annotation dict (see the module docstring); returns the counts of
    the soft problems (also logged as one warning when any is non-zero)."""
    if not isinstance(dataset, dict):
        raise ValueError(f"annotation file {source} is not a COCO-format file (a "
                         f"{type(dataset).__name__}, not an object)")
    images = _list(dataset, "images", source, required=True)
    annotations = _list(dataset, "annotations", source, required=False)
    categories = _list(dataset, "categories", source, required=False)
    image_ids, duplicate_images = set(), 0
    for i, image in enumerate(images):
        if not isinstance(image, dict):
            raise _entry_error(source, "images", i, image, "is not an object")
        if not _is_int(image.get("id")):
            raise _entry_error(source, "images", i, image, "has no integer 'id'")
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise _entry_error(source, "images", i, image, "has no 'file_name' string")
        if leaves_root(name):
            raise _entry_error(source, "images", i, image,
                               "has a file_name that leaves the image root")
        for key in ("height", "width"):
            if key in image and not _is_number(image[key]):
                raise _entry_error(source, "images", i, image, f"has a non-numeric '{key}'")
        duplicate_images += image["id"] in image_ids
        image_ids.add(image["id"])
    category_ids = set()
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise _entry_error(source, "categories", i, category, "has no integer 'id'")
        category_ids.add(category["id"])
    counts = dict(negative_size=0, undeclared_category=0, unknown_image=0,
                  duplicate_image_id=duplicate_images, duplicate_annotation_id=0)
    annotation_ids = set()
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise _entry_error(source, "annotations", i, ann, "is not an object")
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise _entry_error(source, "annotations", i, ann, f"has no integer '{key}'")
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_is_number, box))):
            raise _entry_error(source, "annotations", i, ann,
                               "has no 'bbox' of four numbers [x, y, width, height]")
        counts["negative_size"] += box[2] < 0 or box[3] < 0
        counts["undeclared_category"] += bool(categories) and ann["category_id"] not in category_ids
        counts["unknown_image"] += ann["image_id"] not in image_ids
        counts["duplicate_annotation_id"] += ann["id"] in annotation_ids
        annotation_ids.add(ann["id"])
    problems = {"annotations with a negative box width or height": counts["negative_size"],
                "annotations of categories the file does not declare": counts["undeclared_category"],
                "annotations of images the file does not list": counts["unknown_image"],
                "duplicate image ids": counts["duplicate_image_id"],
                "duplicate annotation ids": counts["duplicate_annotation_id"]}
    found = [f"{n} {what}" for what, n in problems.items() if n]
    if found:
        log.warning("annotation file %s: %s", source, "; ".join(found))
    return counts
