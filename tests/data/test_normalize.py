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
