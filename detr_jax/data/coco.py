"""COCO-format datasets: an annotation JSON plus an image directory, read with pycocotools.

``CocoSource`` gives random access to :class:`Example` records (decoded RGB image, boxes,
COCO category ids) in increasing image-id order, and the pycocotools ``COCO`` ground truth
that ``COCOeval`` needs; it is the :class:`~detr_jax.data.source.DetectionSource` that
training and evaluation read. Images are decoded with PIL and converted to RGB exactly as
the official DETR loader does (``Image.open(path).convert("RGB")``), so grayscale, palette
and CMYK JPEGs work. The TFDS source (``tfds_source``) yields the same examples.

Errors: a missing annotation file or image root raises ``FileNotFoundError`` naming the
path when the source is opened; an image that is missing or cannot be decoded raises
:class:`BadImageError` (naming its path and image id) when it is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from detr_jax import paths
from detr_jax.data.transforms import resize
from detr_jax.data.validate import validate_coco

DEFAULT_SPLIT = "val2017"
UNDECODABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
               Image.DecompressionBombError, Image.DecompressionBombWarning)


class BadImageError(ValueError):
    """An image that is missing or cannot be decoded; names its path and image id."""

    def __init__(self, path: str, image_id: int, reason: str):
        self.path = path
        self.image_id = int(image_id)
        self.reason = reason
        super().__init__(f"image {path} (id {image_id}) cannot be decoded: {reason}")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """What is known of an image without decoding it. ``height``/``width`` come from the
    annotation file (COCO) or the encoded image's header (TFDS)."""

    index: int
    image_id: int
    file_name: str
    path: str
    height: int
    width: int


@dataclasses.dataclass
class Example:
    """One evaluation example.

    image: (H, W, 3) uint8 RGB. boxes: (N, 4) float32 ``[x0, y0, x1, y1]`` in pixels of the
    original image. labels: (N,) int64 COCO category ids. iscrowd: (N,) bool. area: (N,)
    float32 (the annotation's area field). annotation_ids: (N,) int64. Crowd boxes are
    included (training drops them: :func:`~detr_jax.data.source.training_targets`).
    """

    image_id: int
    file_name: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    annotation_ids: np.ndarray

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def decode_rgb(data: bytes | str, *, path: str, image_id: int) -> np.ndarray:
    """Decode encoded image bytes (or read a file) to an (H, W, 3) uint8 RGB array, as the
    official loader does (PIL, ``convert("RGB")``). Raises :class:`BadImageError`."""
    return np.asarray(open_rgb(data, path=path, image_id=image_id), dtype=np.uint8)


def decode_resized(data: bytes | str, *, path: str, image_id: int, size: int | None = None,
                   max_size: int | None = 1333) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode as :func:`decode_rgb` and, when ``size`` is given, resize the decoded PIL
    image once by the official rule (``transforms.resize``: PIL bilinear) before it
    becomes an array. Returns ((h, w, 3) uint8, (original height, original width))."""
    image = open_rgb(data, path=path, image_id=image_id)
    original = (image.height, image.width)
    if size is not None:
        image = resize(image, size, max_size)
    return np.asarray(image, dtype=np.uint8), original


def open_rgb(data: bytes | str, *, path: str, image_id: int) -> Image.Image:
    """The decoded RGB PIL image of encoded bytes or a file (``convert("RGB")``).
    Raises :class:`BadImageError`."""
    try:
        with warnings.catch_warnings():  # a decompression bomb is an undecodable image
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(data, str) and paths.is_remote(data):
                if not paths.isfile(data):
                    raise BadImageError(path, image_id, "file does not exist")
                with paths.open_file(data, "rb") as f:
                    opened = Image.open(io.BytesIO(f.read()))
            elif isinstance(data, str):
                data = paths.resolve(data) if paths.is_url(data) else data
                if not os.path.isfile(data):
                    raise BadImageError(path, image_id, "file does not exist")
                opened = Image.open(data)
            else:
                opened = Image.open(io.BytesIO(data))
            with opened as image:
                image.load()
                return image.convert("RGB")
    except BadImageError:
        raise
    except UNDECODABLE as err:
        raise BadImageError(path, image_id, f"{type(err).__name__}: {err}") from None


def image_size_from_bytes(data: bytes) -> tuple[int, int]:
    """(height, width) from an encoded image's header (no full decode)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


def empty_annotations():
    """(boxes, labels, iscrowd, area, ids) of an image without annotations."""
    return (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool),
            np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def annotations_to_arrays(annotations: list[dict]):
    """COCO annotation dicts -> (boxes (N, 4) float32 xyxy, labels (N,) int64, iscrowd (N,)
    bool, area (N,) float32, ids (N,) int64), in the given order (the annotation file's,
    as the official loader). Boxes are computed in float32 (``x0 + w``), as the official
    ``ConvertCocoPolysToMask``."""
    if not annotations:
        return empty_annotations()
    xywh = np.array([a["bbox"] for a in annotations], np.float64).reshape(-1, 4)
    corner = xywh[:, :2].astype(np.float32)
    boxes = np.concatenate([corner, corner + xywh[:, 2:].astype(np.float32)], axis=1)
    labels = np.array([a["category_id"] for a in annotations], np.int64)
    iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool)
    area = np.array([a.get("area", w * h) for a, (_, _, w, h) in zip(annotations, xywh)],
                    np.float32)
    ids = np.array([a["id"] for a in annotations], np.int64)
    return boxes, labels, iscrowd, area, ids


def _join(base: str, *parts: str) -> str:
    """``os.path.join`` for local paths (kept as given), ``detr_jax.paths.join`` for URLs."""
    return paths.join(base, *parts) if paths.is_url(base) else os.path.join(base, *parts)


def load_coco(annotation_file: str):
    """pycocotools ``COCO`` of a file, quietly; errors name the file."""
    if not paths.isfile(annotation_file):
        raise FileNotFoundError(f"annotation file {annotation_file} does not exist")
    try:
        with paths.open_file(annotation_file) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"annotation file {annotation_file} is not valid JSON: {err}") from None
    if not isinstance(dataset, dict) or "images" not in dataset:
        raise ValueError(f"annotation file {annotation_file} is not a COCO-format file "
                         "(no 'images' list)")
    validate_coco(dataset, annotation_file)
    dataset.setdefault("annotations", [])
    dataset.setdefault("categories", [])
    return coco_from_dict(dataset)


def coco_from_dict(dataset: dict):
    """A pycocotools ``COCO`` built from an in-memory dict (no printing)."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def resolve_paths(coco_dir: str | None = None, annotations: str | None = None,
                  image_root: str | None = None, split: str = DEFAULT_SPLIT) -> tuple[str, str]:
    """The annotation file and image root of a COCO-format dataset.

    ``coco_dir`` gives ``coco_dir/annotations/instances_<split>.json`` and
    ``coco_dir/<split>/``; explicit ``annotations`` / ``image_root`` override either.
    Raises FileNotFoundError naming the first missing path.
    """
    if coco_dir:
        if not paths.isdir(coco_dir):
            raise FileNotFoundError(f"COCO directory {coco_dir} does not exist")
        annotations = annotations or _join(coco_dir, "annotations", f"instances_{split}.json")
        image_root = image_root or _join(coco_dir, split)
    if not annotations or not image_root:
        raise ValueError("a COCO-format dataset needs --coco-dir, or both --annotations and "
                         "--image-root")
    if not paths.isfile(annotations):
        raise FileNotFoundError(f"annotation file {annotations} does not exist")
    if not paths.isdir(image_root):
        raise FileNotFoundError(f"image root {image_root} does not exist")
    return annotations, image_root


class CocoSource:
    """Random access to a COCO-format dataset's examples, in increasing image-id order
    (a :class:`~detr_jax.data.source.DetectionSource`).

    ``source[i]`` decodes image i; ``source.records[i]`` is its metadata; ``source.coco``
    is the pycocotools ground truth for ``COCOeval``.
    """

    kind = "coco"

    def __init__(self, annotations: str, image_root: str):
        if not paths.isfile(annotations):
            raise FileNotFoundError(f"annotation file {annotations} does not exist")
        if not paths.isdir(image_root):
            raise FileNotFoundError(f"image root {image_root} does not exist")
        self.annotation_file = annotations
        self.image_root = image_root
        self.coco = load_coco(annotations)
        records = []
        for index, image_id in enumerate(sorted(self.coco.imgs)):
            info = self.coco.imgs[image_id]
            records.append(ImageRecord(index, int(image_id), info["file_name"],
                                       _join(image_root, info["file_name"]),
                                       int(info.get("height", 0)), int(info.get("width", 0))))
        self.records = records
        self.category_ids = sorted(int(c) for c in self.coco.cats)
        self.category_names = {int(c): v.get("name", str(c)) for c, v in self.coco.cats.items()}

    @classmethod
    def from_dir(cls, coco_dir: str | None = None, annotations: str | None = None,
                 image_root: str | None = None, split: str = DEFAULT_SPLIT) -> "CocoSource":
        return cls(*resolve_paths(coco_dir, annotations, image_root, split))

    def describe(self) -> str:
        """One line naming the dataset, for logs and reports."""
        return f"COCO-format {self.annotation_file} (images {self.image_root})"

    def __len__(self) -> int:
        return len(self.records)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image from the annotation file (from the file's header
        where the annotation file gives none; (0, 0) when the file cannot be read)."""
        sizes = []
        for r in self.records:
            if r.height > 0 and r.width > 0:
                sizes.append((r.height, r.width))
                continue
            try:
                if paths.is_url(r.path):
                    with paths.open_file(r.path, "rb") as f:
                        data = f.read()
                    sizes.append(image_size_from_bytes(data))
                    continue
                with Image.open(r.path) as image:
                    sizes.append((image.height, image.width))
            except UNDECODABLE:
                sizes.append((0, 0))
        return sizes

    def load_image(self, index: int, size: int | None = None, max_size: int | None = 1333
                   ) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``index`` decoded (and resized by the official rule when ``size`` is
        given) -> ((h, w, 3) uint8, (original height, original width))."""
        record = self.records[index]
        return decode_resized(record.path, path=record.path, image_id=record.image_id,
                              size=size, max_size=max_size)

    def annotations(self, index: int):
        """:func:`annotations_to_arrays` of image ``index``'s annotations."""
        record = self.records[index]
        return annotations_to_arrays(self.coco.imgToAnns.get(record.image_id, []))

    def __getitem__(self, index: int) -> Example:
        record = self.records[index]
        image = decode_rgb(record.path, path=record.path, image_id=record.image_id)
        boxes, labels, iscrowd, area, ids = self.annotations(index)
        return Example(record.image_id, record.file_name, image, boxes, labels, iscrowd, area, ids)
