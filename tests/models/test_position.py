import numpy as np
import pytest
import jax.numpy as jnp

from detr_jax.models.position import downsample_mask, nearest_indices, sine_position_embedding


@pytest.mark.parametrize("size_in,size_out", [(320, 20), (288, 18), (800, 50), (1199, 75),
                                              (1333, 84), (37, 5), (5, 7)])
def test_nearest_indices_match_torch_interpolate(size_in, size_out):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ramp = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    expected = F.interpolate(ramp, size=(size_out, 1)).numpy()[0, 0, :, 0].astype(int)
    np.testing.assert_array_equal(nearest_indices(size_in, size_out), expected)


def test_mask_downsampling_by_floor_index_not_centres():
    # 10 rows, padding from row 7 on, downsampled to 3 rows: torch picks rows 0, 3, 6.
    mask = np.zeros((1, 10, 4), bool)
    mask[:, 7:] = True
    out = np.asarray(downsample_mask(jnp.asarray(mask), (3, 2)))
    assert out[0, :, 0].tolist() == [False, False, False]
    # a centre-sampling resize (rows 1, 5, 8) would mark the last row as padding
    assert mask[0, 8, 0]


def test_sine_embedding_layout_and_normalization():
    mask = np.zeros((1, 2, 3), bool)
    mask[0, :, 2] = True  # last column padded
    pos = np.asarray(sine_position_embedding(jnp.asarray(mask), num_pos_feats=4))
    assert pos.shape == (1, 2, 3, 8)
    # y channels first: row 1 of 2 valid rows -> y = 2*pi*(2/2) ; x: col 1 of 2 valid cols
    y_last = 2 * np.pi * 2 / (2 + 1e-6)
    np.testing.assert_allclose(pos[0, 1, 0, 0], np.sin(y_last), atol=1e-6)
    np.testing.assert_allclose(pos[0, 1, 0, 1], np.cos(y_last), atol=1e-6)
    dim_t2 = 10000 ** (2 * 1 / 4)
    x1 = 2 * np.pi * 2 / (2 + 1e-6)
    np.testing.assert_allclose(pos[0, 0, 1, 6], np.sin(x1 / dim_t2), atol=1e-6)
    np.testing.assert_allclose(pos[0, 0, 1, 7], np.cos(x1 / dim_t2), atol=1e-6)
