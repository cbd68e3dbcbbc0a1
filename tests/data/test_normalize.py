"""Device normalization equals the host (official) normalization bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.data.normalize import normalize, normalize_host


def test_every_uint8_value_matches_the_host_and_padding_is_zero():
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([values, values[::-1], np.roll(values, 7)], -1).reshape(1, 16, 16, 3)
    mask = np.zeros((1, 16, 16), bool)
    mask[0, 12:] = True
    got = np.asarray(jax.jit(normalize)(jnp.asarray(pixels), jnp.asarray(mask)))
    assert got.dtype == np.float32
    expected = normalize_host(pixels)
    np.testing.assert_array_equal(got[0, :12], expected[0, :12])
    assert (got[0, 12:] == 0).all()


def test_float_inputs_are_already_normalized():
    x = jnp.linspace(-2, 2, 2 * 3 * 4 * 3, dtype=jnp.float32).reshape(2, 3, 4, 3)
    assert normalize(x, jnp.zeros((2, 3, 4), bool)) is x


def test_padded_uint8_batch_normalized_on_device_is_the_official_input(reference):
    from detr_jax.data.collate import pad_images
    pixels, mask = pad_images([reference["image0"], reference["image1"]])
    np.testing.assert_array_equal(mask, reference["exact_batch/pixel_padding_mask"])
    got = np.asarray(jax.jit(normalize)(jnp.asarray(pixels), jnp.asarray(mask)))
    np.testing.assert_allclose(got[:, ::8, ::8].transpose(0, 3, 1, 2),
                               reference["exact_batch/pixel_values_sub8"], rtol=0, atol=1e-6)
