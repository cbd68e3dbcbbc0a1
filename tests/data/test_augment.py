import numpy as np
from PIL import Image

from detr_jax.data.augment import (AugmentConfig, augmentation_plan, augmented_size, crop, hflip,
                                   resize, train_transform)


def test_hflip_mirrors_boxes():
    image = Image.new("RGB", (100, 50))
    _, boxes = hflip(image, np.array([[10, 5, 30, 20]], np.float32))
    np.testing.assert_allclose(boxes, [[70, 5, 90, 20]])


def test_resize_scales_boxes_with_official_rule():
    image = Image.new("RGB", (640, 480))
    out, boxes = resize(image, np.array([[64, 48, 128, 96]], np.float32), 800, 1333)
    assert out.size == (1066, 800)
    np.testing.assert_allclose(boxes, [[64 * 1066 / 640, 80, 128 * 1066 / 640, 160]], rtol=1e-5)


def test_crop_clips_and_drops_empty_boxes():
    image = Image.new("RGB", (100, 100))
    boxes = np.array([[10, 10, 50, 50], [80, 80, 95, 95], [0, 0, 5, 5]], np.float32)
    out, kept, labels = crop(image, boxes, np.array([1, 2, 3]), 20, 20, 50, 50)
    assert out.size == (50, 50)
    np.testing.assert_allclose(kept, [[0, 0, 30, 30]])  # second box outside, third left of crop
    assert labels.tolist() == [1]


def test_deterministic_given_seed_and_boxes_stay_inside():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    boxes = np.array([[10, 20, 200, 250], [300, 10, 390, 100]], np.float32)
    cfg = AugmentConfig(scales=(224, 256), max_size=400, crop_resize_scales=(200, 240), crop_min=150, crop_max=220)
    outs = [train_transform(np.random.default_rng(7), image, boxes, np.array([1, 2]), cfg) for _ in range(2)]
    assert np.array_equal(np.asarray(outs[0][0]), np.asarray(outs[1][0]))
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    for seed in range(20):
        im, b, l = train_transform(np.random.default_rng(seed), image, boxes, np.array([1, 2]), cfg)
        assert min(im.size) in (224, 256) or max(im.size) <= 400
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= im.width + 1e-3).all() and (b[:, 3] <= im.height + 1e-3).all()
        assert len(b) == len(l)


def test_augmented_size_is_the_augmented_images_size():
    """The size-only replay makes the transform's draws: over many seeds, image sizes
    (small ones that skip the crop's draws, large, extreme aspect ratios) and configs
    (with and without flips, COCO's and a tiny one) it gives the image's size, and the
    generator ends in the same state."""
    configs = [AugmentConfig(), AugmentConfig(flip=False),
               AugmentConfig(scales=(64, 80, 96), max_size=128, crop_resize_scales=(64, 80),
                             crop_min=48, crop_max=80)]
    sizes = [(480, 640), (640, 480), (375, 500), (40, 900), (900, 40), (333, 333), (60, 50),
             (1, 1), (384, 384), (427, 640)]
    crops = 0
    for k, cfg in enumerate(configs):
        for height, width in sizes:
            image = Image.new("RGB", (width, height))
            for seed in range(25):
                a, b = np.random.default_rng([seed, k]), np.random.default_rng([seed, k])
                out, _, _ = train_transform(a, image, np.zeros((0, 4)), np.zeros((0,)), cfg)
                plan = augmentation_plan(np.random.default_rng([seed, k]), height, width, cfg)
                crops += any(op[0] == "crop" for op in plan)
                assert augmented_size(b, height, width, cfg) == (out.height, out.width), (
                    cfg, height, width, seed)
                assert a.random() == b.random()  # the same number of draws
    assert crops > 200  # the crop branch was exercised
