import numpy as np
import jax
import jax.numpy as jnp
import pytest
from scipy.optimize import linear_sum_assignment

from detr_jax.training.matcher import hungarian_match, matching_cost, resolve_solver


@pytest.mark.parametrize("solver", ["scipy", "optax", "kernel"])
@pytest.mark.parametrize("seed", range(3))
def test_total_matched_cost_equals_scipy_optimum_with_padded_targets(seed, solver):
    rng = np.random.default_rng(seed)
    batch, queries, max_targets = 3, 12, 7
    cost = rng.normal(size=(batch, queries, max_targets)).astype(np.float32)
    counts = rng.integers(0, max_targets + 1, batch)
    valid = np.arange(max_targets)[None] < counts[:, None]
    padded = np.where(valid[:, None, :], cost, 0.0).astype(np.float32)
    assigned = np.asarray(jax.jit(lambda c: hungarian_match(c, solver))(jnp.asarray(padded)))
    for b in range(batch):
        n = counts[b]
        rows, cols = linear_sum_assignment(cost[b, :, :n])
        ours = cost[b, assigned[b, :n], np.arange(n)].sum()
        np.testing.assert_allclose(ours, cost[b, rows, cols].sum(), rtol=1e-5, atol=1e-5)
        assert len(set(assigned[b].tolist())) == max_targets  # distinct queries


def test_matching_cost_terms():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]]))  # 2 queries, 2 classes + no-object
    pred = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])
    tgt = jnp.array([[[0.5, 0.5, 0.2, 0.2]]])
    cost = matching_cost(logits, pred, jnp.array([[1]]), tgt, jnp.array([[True]]))
    # query 0: -p(1)=-0.2, L1 0, GIoU 1 -> 5*0 - 0.2 - 2*1
    np.testing.assert_allclose(cost[0, 0, 0], -0.2 - 2.0, rtol=1e-5)
    # query 1: -0.8 + 5*0.4 - 2*GIoU; boxes [0.2,0.2,0.4,0.4] vs [0.4,0.4,0.6,0.6] touch at a corner:
    # IoU 0, enclosing 0.16, union 0.08 -> GIoU = -0.5
    np.testing.assert_allclose(cost[0, 1, 0], -0.8 + 5 * 0.4 + 1.0, rtol=1e-5)


@pytest.mark.parametrize("solver", ["scipy", "optax", "kernel"])
def test_leading_dims_and_vmap(solver):
    """(layers, batch, Q, T) at once, and under vmap, equals matching each matrix."""
    rng = np.random.default_rng(7)
    cost = jnp.asarray(rng.normal(size=(3, 2, 6, 4)), jnp.float32)
    whole = np.asarray(hungarian_match(cost, solver))
    mapped = np.asarray(jax.vmap(lambda c: hungarian_match(c, solver))(cost))
    for i in range(3):
        for b in range(2):
            single = np.asarray(hungarian_match(cost[i, b][None], solver))[0]
            np.testing.assert_array_equal(whole[i, b], single)
            np.testing.assert_array_equal(mapped[i, b], single)


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="hungary"):
        hungarian_match(jnp.zeros((1, 3, 2)), "hungary")


def test_auto_solver_is_the_kernel_on_gpus_only():
    assert resolve_solver("auto", "gpu") == "kernel"
    assert resolve_solver("auto", "tpu") == "optax"
    assert resolve_solver("auto", "cpu") == "optax"
    assert resolve_solver("scipy", "gpu") == "scipy"
    with pytest.raises(ValueError, match="hungary"):
        resolve_solver("hungary", "gpu")
