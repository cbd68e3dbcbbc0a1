"""The fused table-numbering kernel: its slot function on CPU, the kernel itself on a GPU.

The kernel needs Triton atomics and barriers, which the Pallas interpreter cannot run, so
its own test runs only where a GPU is present (the device benchmarks run this file as a
script: ``python -m tests.attention.test_table_kernel``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.attention.clustering import NO_CLUSTER, _table_slot, table_bits, table_cluster_ids
from detr_jax.attention.table_kernel import table_slot_i32
from tests.attention.test_clustering import hash_rows

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU (Triton)")


def test_int32_slot_function_equals_the_uint32_one():
    """The kernel hashes int32 bit patterns; its slots must be the XLA numbering's."""
    hi, lo, _ = hash_rows(0, rows=4, n=3000, distinct=3000)
    as_i32 = lambda w: jax.lax.bitcast_convert_type(w, jnp.int32)
    for round_index in range(9):
        for bits in (7, 14, 31):
            np.testing.assert_array_equal(
                table_slot_i32(as_i32(hi), as_i32(lo), round_index, bits),
                _table_slot(hi, lo, round_index, bits))


def test_table_size_is_checked():
    assert table_bits(3800) == 14
    with pytest.raises(ValueError, match="overflow int32"):
        table_bits(2**29, rounds=8)


@on_gpu
@pytest.mark.parametrize("distinct", [1, 9, 475, 1900, 3800])
def test_kernel_equals_the_xla_table_numbering(distinct):
    from detr_jax.attention.table_kernel import table_numbering
    heads = 8
    hi, lo, _ = hash_rows(distinct, rows=2 * heads, n=3800, distinct=distinct)
    valid = np.ones((2, 3800), bool)
    valid[1, 2500:] = False  # image 1 is padded
    rows_valid = jnp.asarray(np.repeat(valid, heads, axis=0))
    ids, counts, sizes = table_numbering(hi, lo, jnp.asarray(valid), heads=heads)
    expected, expected_counts = table_cluster_ids(hi, lo, rows_valid)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(counts, expected_counts)
    assert np.all(np.asarray(ids)[heads:, 2500:] == NO_CLUSTER)
    for r in range(2 * heads):  # sizes: members per cluster, zero past the count
        members = np.bincount(np.asarray(ids[r])[np.asarray(rows_valid[r])], minlength=3800)
        np.testing.assert_array_equal(sizes[r], members)
    unmasked = table_numbering(hi, lo, None, heads=heads)[0]
    np.testing.assert_array_equal(unmasked[:heads], expected[:heads])


if __name__ == "__main__":
    test_int32_slot_function_equals_the_uint32_one()
    for d in (1, 9, 475, 1900, 3800):
        test_kernel_equals_the_xla_table_numbering(d)
    print(f"table kernel: all checks passed on {jax.devices()[0].device_kind}")
