"""Shared pieces of the encoder-attention interface."""

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.attention.base import count_valid


def test_count_valid_counts_and_reads_the_mask_through_a_barrier():
    valid = jnp.asarray(np.arange(12).reshape(3, 4) % 5 != 0)
    np.testing.assert_array_equal(count_valid(valid), np.asarray(valid).sum(axis=1))
    # The barrier keeps XLA from fusing the count with other readers of the mask.
    assert "optimization_barrier" in str(jax.make_jaxpr(count_valid)(valid))
