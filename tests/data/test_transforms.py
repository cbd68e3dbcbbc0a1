import numpy as np
import pytest
from PIL import Image

import detr_jax
from detr_jax.data.collate import padded_shape
from detr_jax.data.normalize import normalize_host
from detr_jax.data.transforms import resized_size


# (h, w) -> official resize (size 800, max 1333), worked out by hand from
# datasets/transforms.py::get_size_with_aspect_ratio
@pytest.mark.parametrize("hw,expected", [
    ((480, 640), (800, 1066)),     # 640/480*800 = 1066.67 -> int
    ((427, 640), (800, 1199)),     # COCO's most common size
    ((375, 500), (800, 1066)),
    ((640, 480), (1066, 800)),     # portrait
    ((612, 612), (800, 800)),
    ((800, 1000), (800, 1000)),    # short side already 800: unchanged
    ((300, 1000), (400, 1333)),    # too long: size = round(1333*300/1000) = 400
    ((1000, 300), (1333, 400)),
    ((100, 2000), (67, 1340)),     # size = round(66.65) = 67; long = int(67*2000/100)
])
def test_resize_rule(hw, expected):
    assert resized_size(*hw) == expected


def test_preprocess_resizes_pads_and_masks():
    images = [np.full((480, 640, 3), 128, np.uint8), np.full((640, 480, 3), 10, np.uint8)]
    batch = detr_jax.preprocess(images)
    assert batch.pixel_values.shape == (2, 1066, 1066, 3)
    assert batch.image_sizes.tolist() == [[800, 1066], [1066, 800]]
    assert batch.original_sizes.tolist() == [[480, 640], [640, 480]]
    assert not batch.padding_mask[0, :800, :1066].any() and batch.padding_mask[0, 800:].all()
    assert (batch.pixel_values[0, 800:] == 0).all()
    assert batch.padding_mask[1, :, 800:].all()


def test_granularity_buckets():
    assert padded_shape([800, 750], [1066, 1199], 64) == (832, 1216)
    assert padded_shape([800], [1199], None) == (800, 1199)
    batch = detr_jax.preprocess([np.zeros((427, 640, 3), np.uint8)], granularity=64)
    assert batch.pixel_values.shape == (1, 832, 1216, 3)
    assert batch.padding_mask[0, 800:].all() and batch.padding_mask[0, :, 1199:].all()


def test_normalize_matches_torchvision_order():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = ((t - mean) / std).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(normalize_host(image), expected)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_non_rgb_images_are_converted(mode):
    image = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    batch = detr_jax.preprocess([image], resize_images=False)
    assert batch.pixel_values.shape == (1, 10, 20, 3)


def test_bad_arrays_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        detr_jax.preprocess([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        detr_jax.preprocess([])


def test_bucket_counts_collapse_sizes():
    from detr_jax.data.buckets import bucket_counts, sweep_sizes
    sizes = [(480, 640), (427, 640), (428, 640), (375, 500), (640, 480)]
    assert len(bucket_counts(sizes, None)) == 4      # 480x640 and 375x500 share 800x1066
    counts = bucket_counts(sizes, 64)
    assert counts == {(832, 1088): 2, (832, 1216): 2, (1088, 832): 1}
    sweep = sweep_sizes()
    assert len(bucket_counts(sweep, 64)) < len(bucket_counts(sweep, 32)) < len(bucket_counts(sweep, None))
