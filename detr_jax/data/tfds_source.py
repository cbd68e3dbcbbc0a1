"""TFDS ``coco/2017`` read through ``tfds.data_source`` (array_record; no TensorFlow).

``TfdsCocoSource`` is a :class:`~detr_jax.data.source.DetectionSource` that yields the same
:class:`~detr_jax.data.coco.Example` records as ``CocoSource`` for the same images, in
increasing image-id order (annotations in annotation-id order, which is the file's order
of ``CocoSource`` when the annotation file lists them by id): the encoded image bytes
are taken as stored (``SkipDecoding``) and decoded with PIL to RGB like the official
loader, so pixels are identical; boxes are turned back from TFDS's normalized
``[ymin, xmin, ymax, xmax]`` into pixels of the decoded image (float32 rounding of the
normalized values, about 1e-5 px); labels (TFDS's contiguous 0-79 ``ClassLabel``) map back
to COCO category ids by name. TFDS stores ``area`` as an integer (COCO's float area
truncated), so without ``annotations`` the rebuilt ground truth's areas are truncated;
pass the annotation file (``--annotations``) to evaluate against the exact ground truth.

The dataset must already be prepared in ``data_dir`` with ``file_format="array_record"``
(nothing is downloaded). Needs ``tensorflow-datasets`` and ``array_record``
(``pip install 'detr_jax[tfds]'``); they are imported only when a TFDS source is opened.
"""

from __future__ import annotations

import os
import re

import numpy as np

from detr_jax import paths
from detr_jax.data.coco import (BadImageError, Example, ImageRecord, coco_from_dict,
                                decode_resized, image_size_from_bytes, load_coco)
from detr_jax.data.transforms import resize, to_pil_rgb
from detr_jax.data.coco_names import COCO_CATEGORY_NAMES

INSTALL_HINT = ("pip install 'detr_jax[tfds]' (tensorflow-datasets and array_record; "
                "TensorFlow is not needed)")


def import_tfds():
    """``tensorflow_datasets``, or ImportError saying how to install it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f"reading TFDS datasets needs tensorflow-datasets: {INSTALL_HINT} "
                          f"({err})") from None
    try:
        import array_record  # noqa: F401  (the data source's file format)
    except ImportError as err:
        raise ImportError(f"reading TFDS datasets needs array_record: {INSTALL_HINT} "
                          f"({err})") from None
    return tfds


def _version_key(name: str):
    return tuple(int(p) for p in name.split("."))


def find_prepared_dir(data_dir: str, name: str) -> str | None:
    """The prepared directory ``data_dir/<dataset>/<config>/<version>`` of ``name``
    (``coco/2017`` or ``coco/2017:1.1.0``; the highest version when none is given)."""
    base, _, version = name.partition(":")
    directory = paths.join(data_dir, *base.split("/"))  # data_dir may be a URL (gs://...)
    if version:
        candidate = paths.join(directory, version)
        return candidate if paths.isfile(paths.join(candidate, "dataset_info.json")) else None
    if not paths.isdir(directory):
        return None
    versions = [v for v in paths.listdir(directory) if re.fullmatch(r"\d+\.\d+\.\d+", v)
                and paths.isfile(paths.join(directory, v, "dataset_info.json"))]
    if not versions:
        return None
    return paths.join(directory, max(versions, key=_version_key))


def open_data_source(data_dir: str, name: str = "coco/2017", split: str = "validation"):
    """A random-access TFDS data source with the images left encoded.

    A prepared directory is read with ``tfds.builder_from_directory`` (needs no dataset
    code, so builders that import TensorFlow, as TFDS's ``coco`` does, still work);
    otherwise ``tfds.data_source(..., download=False)``.
    """
    tfds = import_tfds()
    if not paths.isdir(data_dir):
        raise FileNotFoundError(f"TFDS data directory {data_dir} does not exist")
    decoders = {"image": tfds.decode.SkipDecoding()}
    directory = find_prepared_dir(data_dir, name)
    try:
        if directory is not None:
            builder = tfds.builder_from_directory(directory)
            file_format = getattr(builder.info, "file_format", None)
            file_format = str(getattr(file_format, "value", file_format) or "")
            if file_format and "array_record" not in file_format.lower():
                raise ValueError(f"TFDS dataset {directory} is stored as {file_format}; random "
                                 "access needs array_record (prepare it with "
                                 "file_format='array_record')")
            return builder.as_data_source(split=split, decoders=decoders), builder.info
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                  decoders=decoders)
        return source, source.dataset_info
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # TFDS raises assorted errors for missing data
        raise FileNotFoundError(
            f"TFDS dataset {name} split {split!r} cannot be opened in {data_dir} (expected a "
            f"prepared array_record copy under {os.path.join(data_dir, *name.split(':')[0].split('/'))}"
            f"/<version>/): {type(err).__name__}: {err}") from None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def label_category_ids(label_names, name_to_id: dict[str, int] | None = None) -> np.ndarray:
    """COCO category id of each TFDS label index (0-79), matched by category name."""
    table = name_to_id or {v: k for k, v in COCO_CATEGORY_NAMES.items()}
    missing = [n for n in label_names if n not in table]
    if missing:
        raise ValueError(f"TFDS labels without a COCO category id: {missing[:5]} (pass the "
                         "annotation file to map them)")
    return np.array([table[n] for n in label_names], np.int64)


def record_image(record: dict, *, where: str = "tfds", size: int | None = None,
                 max_size: int | None = 1333) -> tuple[np.ndarray, tuple[int, int]]:
    """The RGB image of one TFDS record (encoded bytes, or an already decoded uint8 array),
    resized by the official rule when ``size`` is given -> ((h, w, 3) uint8, original
    (height, width)). Raises :class:`BadImageError`."""
    image_id = int(record["image/id"])
    file_name = _text(record.get("image/filename", ""))
    image = record["image"]
    path = f"{where}:{file_name}" if file_name else f"{where}:{image_id}"
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image, 3, axis=-1)
        original = rgb.shape[:2]
        if size is not None:
            rgb = np.asarray(resize(to_pil_rgb(rgb), size, max_size), np.uint8)
        return rgb, original
    if isinstance(image, np.ndarray):
        image = image.item() if image.ndim == 0 else image.tobytes()
    return decode_resized(bytes(image), path=path, image_id=image_id, size=size,
                          max_size=max_size)


def example_from_tfds(record: dict, label_to_category: np.ndarray, *, where: str = "tfds"
                      ) -> Example:
    """Our Example from one TFDS coco record (image left encoded).

    The documented coco/2017 layout: ``image`` (encoded JPEG bytes), ``image/id``,
    ``image/filename``, ``objects`` with ``bbox`` (N, 4) normalized ``[ymin, xmin, ymax,
    xmax]``, ``label`` (N,) 0-79, ``is_crowd``, ``area`` (int), ``id``.
    """
    image_id = int(record["image/id"])
    file_name = _text(record.get("image/filename", ""))
    rgb, _ = record_image(record, where=where)
    height, width = rgb.shape[:2]
    objects = record.get("objects") or {}
    bbox = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    n = bbox.shape[0]
    b = bbox.astype(np.float64)
    boxes = np.stack([b[:, 1] * width, b[:, 0] * height, b[:, 3] * width, b[:, 2] * height],
                     axis=1).astype(np.float32)
    labels = np.asarray(objects.get("label", np.zeros(0)), np.int64).reshape(n)
    labels = label_to_category[labels] if n else labels
    iscrowd = np.asarray(objects.get("is_crowd", np.zeros(n, bool)), bool).reshape(n)
    area = np.asarray(objects.get("area", np.zeros(n)), np.float32).reshape(n)
    ids = np.asarray(objects.get("id", np.arange(n)), np.int64).reshape(n)
    order = np.argsort(ids, kind="stable")
    return Example(image_id, file_name, rgb, boxes[order], labels[order], iscrowd[order],
                   area[order], ids[order])


class TfdsCocoSource:
    """TFDS ``coco/2017`` (or another TFDS dataset of that layout) as random-access examples
    in increasing image-id order, with the ground truth for ``COCOeval``.

    annotations: optional COCO annotation file of the same split; when given it is the
      ground truth (exact areas) and names the categories.
    """

    kind = "tfds"

    def __init__(self, data_dir: str, name: str = "coco/2017", split: str = "validation",
                 annotations: str | None = None):
        self.data_dir = data_dir
        self.name = name
        self.split = split
        self.source, info = open_data_source(data_dir, name, split)
        self.label_names = list(info.features["objects"]["label"].names)
        self.annotation_file = annotations
        self._coco = load_coco(annotations) if annotations else None
        name_to_id = None
        if self._coco is not None:
            name_to_id = {c["name"]: int(c["id"]) for c in self._coco.dataset["categories"]}
        self.label_to_category = label_category_ids(self.label_names, name_to_id)
        self.category_ids = sorted(int(c) for c in self.label_to_category)
        self.category_names = {int(c): n for c, n in zip(self.label_to_category, self.label_names)}
        self._records = None
        self._order = None
        self._annotations = None

    def describe(self) -> str:
        """One line naming the dataset, for logs and reports."""
        return f"TFDS {self.name} split {self.split} in {self.data_dir}"

    def __len__(self) -> int:
        return len(self.source)

    def _scan(self):
        """Read every record once: image ids (for the order), sizes, annotations."""
        entries = []
        for raw_index in range(len(self.source)):
            record = self.source[raw_index]
            image_id = int(record["image/id"])
            file_name = _text(record.get("image/filename", ""))
            try:
                height, width = image_size_from_bytes(bytes(record["image"]))
            except Exception:  # reported with its path when decoded
                height, width = 0, 0
            objects = record.get("objects") or {}
            entries.append((image_id, raw_index, file_name, height, width, objects))
        entries.sort(key=lambda e: (e[0], e[1]))
        self._order = [e[1] for e in entries]
        self._records = [ImageRecord(i, e[0], e[2], f"tfds:{self.name}/{self.split}/{e[2]}",
                                     e[3], e[4]) for i, e in enumerate(entries)]
        self._annotations = [e[5] for e in entries]

    @property
    def records(self) -> list[ImageRecord]:
        if self._records is None:
            self._scan()
        return self._records

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image from its encoded header ((0, 0) if unreadable)."""
        return [(r.height, r.width) for r in self.records]

    def _raw(self, index: int) -> dict:
        if self._order is None:
            self._scan()
        record = self.records[index]
        try:
            return self.source[self._order[index]]
        except Exception as err:
            raise BadImageError(record.path, record.image_id, f"unreadable record: {err}") from None

    def __getitem__(self, index: int) -> Example:
        return example_from_tfds(self._raw(index), self.label_to_category,
                                 where=f"tfds:{self.name}/{self.split}")

    def load_image(self, index: int, size: int | None = None, max_size: int | None = 1333
                   ) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``index`` decoded (and resized by the official rule when ``size`` is
        given) -> ((h, w, 3) uint8, (original height, original width))."""
        return record_image(self._raw(index), where=f"tfds:{self.name}/{self.split}",
                            size=size, max_size=max_size)

    @property
    def coco(self):
        """pycocotools ground truth: the annotation file when given, else rebuilt from the
        records (boxes denormalized with the header's image size, areas as stored)."""
        if self._coco is None:
            images, annotations = [], []
            for record, objects in zip(self.records, self._annotations):
                images.append({"id": record.image_id, "file_name": record.file_name,
                               "height": record.height, "width": record.width})
                bbox = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float64).reshape(-1, 4)
                labels = np.asarray(objects.get("label", np.zeros(0)), np.int64).reshape(-1)
                crowd = np.asarray(objects.get("is_crowd", np.zeros(len(bbox), bool)), bool).reshape(-1)
                area = np.asarray(objects.get("area", np.zeros(len(bbox))), np.float64).reshape(-1)
                ids = np.asarray(objects.get("id", np.zeros(len(bbox))), np.int64).reshape(-1)
                h, w = record.height, record.width
                for k in range(len(bbox)):
                    y0, x0, y1, x1 = bbox[k]
                    annotations.append({
                        "id": int(ids[k]), "image_id": record.image_id,
                        "category_id": int(self.label_to_category[labels[k]]),
                        "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h],
                        "area": float(area[k]), "iscrowd": int(crowd[k])})
            categories = [{"id": int(c), "name": n}
                          for c, n in zip(self.label_to_category, self.label_names)]
            self._coco = coco_from_dict({"images": images, "annotations": annotations,
                                         "categories": categories})
        return self._coco
