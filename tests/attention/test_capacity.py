"""Capacity ladder: static sizes, smallest sufficient choice, one compile for all counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.attention.capacity import (DEFAULT_LADDER, capacity_index, ladder_capacities,
                                         parse_ladder, run_at_capacity)


def test_ladder_capacities_round_up_and_end_at_n():
    assert ladder_capacities(3800) == (238, 475, 950, 1900, 3800)
    assert ladder_capacities(540) == (34, 68, 135, 270, 540)
    assert ladder_capacities(10, (0.5,)) == (5, 10)  # N is always the top rung
    assert ladder_capacities(3, DEFAULT_LADDER) == (1, 2, 3)


def test_parse_ladder_forms_agree():
    assert parse_ladder("16/8/4/2/1") == parse_ladder(DEFAULT_LADDER)
    assert parse_ladder(4) == (0.25,)
    with pytest.raises(ValueError, match="divisors"):
        parse_ladder("a/b")
    with pytest.raises(ValueError):
        parse_ladder((0.0, 1.0))


@pytest.mark.parametrize("needed, expected", [(0, 34), (1, 34), (34, 34), (35, 68), (135, 135),
                                              (136, 270), (271, 540), (540, 540)])
def test_capacity_index_picks_smallest_sufficient(needed, expected):
    caps = ladder_capacities(540)
    assert caps[int(capacity_index(needed, caps))] == expected


def test_run_at_capacity_compiles_once_and_matches_eager():
    caps = ladder_capacities(64)
    traces = []

    def padded_sum(x, needed):
        traces.append(1)
        out, used = run_at_capacity(needed, caps, lambda c: jnp.sum(x[:c]) + 0 * c)
        return out, used

    jitted = jax.jit(padded_sum)
    x = jnp.arange(64, dtype=jnp.float32)
    for needed in (3, 9, 30, 64, 1):
        out, used = jitted(x, needed)
        cap = min(c for c in caps if c >= needed)
        assert int(used) == cap
        np.testing.assert_allclose(out, float(np.sum(np.arange(cap))))
        eager_out, eager_used = padded_sum(x, needed)
        assert int(eager_used) == cap and float(eager_out) == float(out)
    assert jitted._cache_size() == 1
    assert len(traces) == 1 + 5  # one trace under jit, then five eager calls


def test_remat_branches_give_the_same_values_and_gradients():
    caps = ladder_capacities(32)
    x = jnp.linspace(-1.0, 1.0, 32)

    def f(x, needed, remat):
        out, _ = run_at_capacity(needed, caps, lambda c: jnp.sum(jnp.tanh(x[:c]) ** 2),
                                 remat=remat)
        return out

    for needed in (2, 17):
        plain = jax.jit(jax.value_and_grad(lambda x: f(x, needed, False)))(x)
        remat = jax.jit(jax.value_and_grad(lambda x: f(x, needed, True)))(x)
        np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
        np.testing.assert_allclose(remat[1], plain[1], rtol=1e-6)
        assert np.count_nonzero(np.asarray(remat[1])) == min(c for c in caps if c >= needed)
