"""The Hungarian kernel gives optax's assignment exactly (interpreter on CPU, Triton on GPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax import assignment
from scipy.optimize import linear_sum_assignment

from detr_jax.training.hungarian_kernel import kernel_assign

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU (Triton)")


def optax_assign(cost: np.ndarray) -> np.ndarray:
    """Query of each target per (Q, T) matrix, from optax's solver directly."""
    flat = cost.reshape((-1,) + cost.shape[-2:])
    out = np.zeros((flat.shape[0], cost.shape[-1]), np.int32)
    for i, c in enumerate(flat):
        rows, cols = assignment.hungarian_algorithm(jnp.asarray(c))
        out[i, np.asarray(cols)] = np.asarray(rows)
    return out.reshape(cost.shape[:-2] + cost.shape[-1:])


def optimum(cost: np.ndarray) -> np.ndarray:
    flat = cost.reshape((-1,) + cost.shape[-2:])
    best = [c[linear_sum_assignment(c)].sum() for c in flat]
    return np.array(best).reshape(cost.shape[:-2])


def matched_cost(cost: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.take_along_axis(cost, query[..., None, :], axis=-2)[..., 0, :].sum(-1)


@pytest.mark.parametrize("queries,targets,integer", [
    (12, 5, False),   # rectangular, random
    (12, 5, True),    # many ties: the first-minimum rule must agree with optax's
    (7, 7, False),    # square
    (16, 1, False),   # one target
    (33, 9, True),    # the padded width (64) exceeds queries + 1 by much
])
def test_same_assignment_as_optax(queries, targets, integer):
    rng = np.random.default_rng(queries * 100 + targets)
    shape = (2, 3, queries, targets)
    cost = (rng.integers(0, 4, shape) if integer else rng.normal(size=shape)).astype(np.float32)
    ours = np.asarray(kernel_assign(jnp.asarray(cost), interpret=True))
    np.testing.assert_array_equal(ours, optax_assign(cost))
    assert all(len(set(row)) == targets for row in ours.reshape(-1, targets))
    np.testing.assert_allclose(matched_cost(cost, ours), optimum(cost), rtol=1e-5, atol=1e-5)


def test_non_finite_costs_end_with_an_assignment():
    """A diverged step's NaN/inf costs still give distinct in-range queries (no endless loop)."""
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(2, 10, 4)).astype(np.float32)
    cost[0, :, 1] = np.nan
    cost[1, 2, :] = np.inf
    cost[1, 5, 0] = -np.inf
    ours = np.asarray(kernel_assign(jnp.asarray(cost), interpret=True))
    assert ours.shape == (2, 4) and ours.min() >= 0 and ours.max() < 10
    assert all(len(set(row)) == 4 for row in ours)


def test_more_targets_than_queries_is_refused():
    with pytest.raises(ValueError, match="more targets"):
        kernel_assign(jnp.zeros((1, 3, 4)), interpret=True)


@on_gpu
@pytest.mark.parametrize("queries,targets", [(300, 20), (900, 20), (100, 100)])
def test_gpu_kernel_equals_optax_at_training_sizes(queries, targets):
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(2, 4, queries, targets)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(kernel_assign(jnp.asarray(cost))),
                                  optax_assign(cost))
