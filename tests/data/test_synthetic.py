"""The synthetic benchmark: deterministic, COCO-shaped, all object sizes, boxes on visible pixels."""

import numpy as np

from detr_jax.data.synthetic import CLASSES, MIN_VISIBLE, render_image


def test_same_seed_same_image_and_other_split_differs():
    a, ann_a = render_image(0, "val", 3)
    b, ann_b = render_image(0, "val", 3)
    c, _ = render_image(0, "train", 3)
    np.testing.assert_array_equal(a, b)
    assert ann_a == ann_b
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_annotations_are_valid_and_cover_small_medium_large():
    areas, counts = [], []
    for index in range(40):
        image, anns = render_image(0, "val", index)
        h, w = image.shape[:2]
        assert 288 <= h <= 448 and 384 <= w <= 576
        assert (h // 16) * (w // 16) >= 400  # encoder tokens at stride 16
        counts.append(len(anns))
        for ann in anns:
            x, y, bw, bh = ann["bbox"]
            assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            assert 1 <= ann["category_id"] <= len(CLASSES)
            assert ann["area"] <= bw * bh  # visible pixels inside the box
            areas.append(ann["area"])
    areas = np.array(areas)
    assert max(counts) <= 6 and np.mean(counts) > 2
    for lo, hi in ((0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, np.inf)):  # COCO's S, M, L
        assert ((areas >= lo) & (areas < hi)).mean() > 0.05
    assert 0 < MIN_VISIBLE < 1
