"""uint8 padding and the training collate."""

import numpy as np
import pytest

from detr_jax.data.collate import collate, extend_padding, pad_images, padded_shape


def test_pad_images_keeps_uint8_and_marks_padding():
    a = np.full((3, 5, 3), 7, np.uint8)
    b = np.full((4, 2, 3), 9, np.uint8)
    pixels, mask = pad_images([a, None, b], granularity=4)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 4, 8, 3)
    np.testing.assert_array_equal(pixels[0, :3, :5], a)
    assert (pixels[0, 3:] == 0).all() and (pixels[0, :, 5:] == 0).all()
    assert mask[1].all() and (pixels[1] == 0).all()
    assert not mask[2, :4, :2].any() and mask[2, :, 2:].all()
    assert pad_images([None])[0].shape == (1, 1, 1, 3)
    with pytest.raises(ValueError, match="image 0 of shape"):
        pad_images([a], shape=(2, 8))
    assert padded_shape([3, 4], [5, 2], 4) == (4, 8)


def test_extend_padding_only_grows_the_padding():
    pixels, mask = pad_images([np.ones((2, 3, 3), np.uint8)])
    batch = {"pixel_values": pixels, "padding_mask": mask, "labels": np.zeros((1, 2))}
    assert extend_padding(batch, (2, 3)) is batch
    grown = extend_padding(batch, (4, 5))
    assert grown["pixel_values"].shape == (1, 4, 5, 3) and grown["labels"] is batch["labels"]
    assert (grown["pixel_values"][0, :2, :3] == 1).all() and grown["pixel_values"][0, 2:].sum() == 0
    assert grown["padding_mask"][0, 2:].all() and not grown["padding_mask"][0, :2, :3].any()


def test_collate_targets_relative_to_the_unpadded_image():
    example = {"image": np.zeros((20, 40, 3), np.uint8), "image_id": 5,
               "boxes": np.array([[0, 0, 20, 10], [10, 5, 30, 15]], np.float32),
               "labels": np.array([3, 4], np.int32)}
    batch = collate([example], granularity=32, max_targets=1)
    assert batch["pixel_values"].shape == (1, 32, 64, 3)
    np.testing.assert_allclose(batch["boxes"][0, 0], [0.25, 0.25, 0.5, 0.5])
    assert batch["labels"].tolist() == [[3]] and batch["valid"].tolist() == [[True]]
    assert batch["image_ids"].tolist() == [5]
    with pytest.raises(ValueError, match="train.pad_to"):
        collate([example], granularity=32, max_targets=2, pad_to=(16, 64))
