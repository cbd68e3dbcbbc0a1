"""The fused attention kernel (through the Pallas interpreter) against the XLA reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import detr_jax
from detr_jax.attention.backend import AttentionBackend, resolve_backend
from detr_jax.attention.flash import (NEG_INF, auto_key_splits, combine_splits, default_tiles,
                                      flash_attention, reference_attention)
from tests.attention.clustered_cases import build_attention, padded_case, relative_error


def inputs(seed=0, batch=2, nq=70, nk=100, heads=3, dim=32):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(batch, nq, heads, dim)) * 0.3, jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(batch, nk, heads, dim)), jnp.float32) for _ in range(2))
    return q, k, v


def test_padded_keys_and_ragged_queries_match_the_reference():
    q, k, v = inputs()
    valid = jnp.asarray(np.arange(100)[None] < np.array([[100], [37]]))
    counts = jnp.asarray([[70, 10, 33], [1, 64, 65]], jnp.int32)  # inside, at and across blocks
    out = flash_attention(q, k, v, valid, counts, interpret=True)
    ref = reference_attention(q, k, v, valid, counts)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    assert float(jnp.abs(out[1, 1:, 0]).max()) == 0.0  # rows past the count are zero


def test_large_logits_and_default_tiles_of_each_dtype():
    """The kernel's base-2 softmax (logits times log2 e, masked keys at -inf) with logits
    of magnitude ~100: against float64 attention it errs no more than twice as much as
    the fp32 XLA reference, with the default tiles of fp32 and of bf16 inputs."""
    q, k, v = inputs(seed=3, nq=140, nk=150)
    q = q * 40.0
    valid = np.arange(150)[None] < np.array([[150], [61]])
    logits = np.einsum("bqhd,bkhd->bhqk", np.float64(q), np.float64(k))
    assert np.abs(logits).max() > 80.0
    logits = np.where(valid[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    truth = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), np.float64(v))
    error = lambda out: np.abs(np.float64(out) - truth).max()
    valid = jnp.asarray(valid)
    reference_error = error(reference_attention(q, k, v, valid, None))
    assert error(flash_attention(q, k, v, valid, interpret=True)) <= 2 * reference_error
    half = [x.astype(jnp.bfloat16) for x in (q / 40.0, k, v)]  # bf16 at ordinary logits
    out = flash_attention(*half, valid, interpret=True)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32),
                               reference_attention(*half, valid, None).astype(jnp.float32), atol=3e-2)
    assert default_tiles(jnp.float32) != default_tiles(jnp.bfloat16)


@pytest.mark.parametrize("block_q,block_k", [(16, 16), (32, 64)])
def test_block_sizes_and_odd_head_dim(block_q, block_k):
    q, k, v = inputs(seed=1, nq=50, nk=45, dim=24)  # head_dim padded to 32 inside
    out = flash_attention(q, k, v, None, None, block_q=block_q, block_k=block_k, interpret=True)
    np.testing.assert_allclose(out, reference_attention(q, k, v, None, None), atol=2e-6)


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_key_splits_match_the_reference(splits):
    """Split-K: key ranges in separate programs, merged by their log-sum-exp; ranges of
    only padded keys (image 1 has 37 valid keys of 100) get no weight."""
    q, k, v = inputs(seed=5)
    valid = jnp.asarray(np.arange(100)[None] < np.array([[100], [37]]))
    counts = jnp.asarray([[70, 10, 33], [1, 64, 0]], jnp.int32)
    out = flash_attention(q, k, v, valid, counts, block_q=16, block_k=16, key_splits=splits,
                          interpret=True)
    np.testing.assert_allclose(out, reference_attention(q, k, v, valid, counts), atol=2e-6)
    assert float(jnp.abs(out[1, :, 2]).max()) == 0.0  # a row with no real query rows


@pytest.mark.parametrize("splits", [1, 2])
def test_query_divisors_divide_rows_before_attending(splits):
    """Prototype sums and cluster sizes in, the attention of the means out; the gradient
    reaches the sums through the division."""
    q, k, v = inputs(seed=7)
    sizes = jnp.asarray(np.random.default_rng(7).integers(0, 5, (2, 3, 70)), jnp.float32)
    means = q / jnp.maximum(sizes, 1.0).transpose(0, 2, 1)[..., None]
    out = flash_attention(q * 1.0, k, v, None, None, sizes, block_k=32, key_splits=splits,
                          interpret=True)
    np.testing.assert_allclose(out, reference_attention(means, k, v, None, None), atol=2e-6)
    loss = lambda f: lambda q: (f(q) ** 2).sum()
    grad = jax.grad(loss(lambda q: flash_attention(q, k, v, None, None, sizes, interpret=True)))(q)
    expected = jax.grad(loss(lambda q: reference_attention(
        q / jnp.maximum(sizes, 1.0).transpose(0, 2, 1)[..., None], k, v, None, None)))(q)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="query_divisors"):
        flash_attention(q, k, v, None, None, sizes[:, :, :10], interpret=True)


def test_combine_splits_weighs_ranges_by_their_softmax_mass():
    """Two ranges with log-sum-exp 0 and log 3 weigh 1 : 3; a range without keys is ignored."""
    partial = jnp.stack([jnp.full((1, 1, 1, 2), 1.0), jnp.full((1, 1, 1, 2), 5.0),
                         jnp.full((1, 1, 1, 2), 0.0)])
    lse = jnp.asarray([0.0, np.log(3.0), NEG_INF], jnp.float32).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(combine_splits(partial, lse), np.full((1, 1, 1, 2), 4.0),
                               rtol=1e-6)


def test_auto_key_splits_fill_a_small_grid():
    assert auto_key_splits(3840, 60, cores=132) == 1  # DC5 encoder at batch 8
    assert auto_key_splits(480, 60, cores=132) == 4  # DC5 encoder at batch 1
    assert auto_key_splits(16, 60, cores=132) == 8  # decoder cross-attention at batch 1
    assert auto_key_splits(16, 7, cores=132) == 1  # too few key blocks to split


def test_backend_key_splits_are_used_and_checked():
    q, k, v = inputs(seed=6, nq=20, nk=40)
    split_partials = "f32[2,2,20,3,32]"  # (splits, batch, rows, heads, dim)
    jaxpr = lambda backend: str(jax.make_jaxpr(
        lambda q: backend.flash(q, k, v, block_k=16))(q))
    fixed = resolve_backend("flash_interpret", key_splits=2)
    assert fixed == AttentionBackend("flash_interpret", 2)
    assert split_partials in jaxpr(fixed)
    split_out = fixed.flash(q, k, v, block_k=16)
    # automatic: 3 key blocks are too few to split
    assert split_partials not in jaxpr(resolve_backend("flash_interpret", key_splits="auto"))
    np.testing.assert_allclose(split_out, reference_attention(q, k, v, None, None), atol=2e-6)
    with pytest.raises(ValueError, match="key_splits=0"):
        flash_attention(q, k, v, key_splits=0, interpret=True)
    with pytest.raises(ValueError, match="key splits"):
        resolve_backend("flash_interpret", key_splits="0")


def test_gradients_flow_through_the_reference_backward():
    q, k, v = inputs(seed=2, nq=20, nk=30)
    valid = jnp.asarray(np.arange(30)[None] < np.array([[30], [11]]))
    loss = lambda f: lambda q, k, v: (f(q, k, v) ** 2).sum()
    fused = jax.grad(loss(lambda q, k, v: flash_attention(q, k, v, valid, interpret=True)),
                     argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: reference_attention(q, k, v, valid, None)),
                   argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_backward_recomputation_waits_for_the_incoming_gradient():
    """The backward pass recomputes the attention matrix behind an optimization barrier
    that also holds the incoming gradient, so XLA cannot hoist every layer's
    recomputation to the end of the forward pass (docs/performance.md)."""
    q, k, v = inputs(seed=3, nq=16, nk=16)
    f = lambda q, k, v: (flash_attention(q, k, v, None, interpret=True) ** 2).sum()
    jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)
    barriers = [eqn for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "optimization_barrier"]
    assert barriers, "no optimization_barrier in the backward pass"
    # q, k, v and the cotangent go through it together
    assert any(len(eqn.invars) >= 4 for eqn in barriers)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                yield from _equations(getattr(inner, "jaxpr", inner))


def test_bad_block_size_is_named():
    q, k, v = inputs()
    with pytest.raises(ValueError, match="block_q=48"):
        flash_attention(q, k, v, block_q=48, interpret=True)


def test_backend_is_checked_and_resolved_for_the_platform():
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("cuda")
    assert resolve_backend("flash_interpret").kernel == "flash_interpret"
    assert resolve_backend().kernel == "xla_map"  # CPU: "auto" resolves to the mapped XLA form
    for name in ("flash", "cudnn"):  # GPU-only kernels are refused when chosen on a CPU
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            resolve_backend(name)


@pytest.mark.parametrize("spec", [detr_jax.Exact(), detr_jax.ACT(rounds=16, bucket_width=0.5),
                                  detr_jax.ACT(rounds=16, bucket_width=0.5, numbering="table")])
def test_attention_variants_give_the_same_result_on_the_kernel(spec):
    """Exact and ACT (ragged prototype counts, no capacity switch) through the kernel equal
    their XLA paths on a padded batch."""
    q, k, v, mask, _ = padded_case()
    args = [jnp.asarray(x) for x in (q, k, v, mask)] + [jax.random.key(4)]
    xla_out, xla_stats = build_attention(spec, backend="xla").attend(*args)
    out, stats = build_attention(spec, backend="flash_interpret").attend(*args)
    valid = ~mask
    assert relative_error(np.asarray(out)[valid], np.asarray(xla_out)[valid]) < 1e-5
    if stats is not None and stats.num_clusters is not None:
        np.testing.assert_array_equal(stats.num_clusters, xla_stats.num_clusters)
        assert int(stats.capacity) == min(64, q.shape[1])  # one 64-row block did work
