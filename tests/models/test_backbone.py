"""The backbone's norms after a conv: frozen BatchNorm folded into the conv's kernel gives
the conv followed by the norm, for every stride and dilation the ResNet uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detr_jax.models.backbone import FrozenBatchNorm, ResNet, conv, make_norm


def random_frozen_bn(channels, seed):
    rng = np.random.default_rng(seed)
    bn = FrozenBatchNorm(channels)
    bn.weight[...] = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(size=channels), jnp.float32)
    bn.running_mean[...] = jnp.asarray(rng.normal(size=channels), jnp.float32)
    bn.running_var[...] = jnp.asarray(rng.uniform(0.1, 3.0, channels), jnp.float32)
    return bn


@pytest.mark.parametrize("kernel,stride,dilation", [(1, 1, 1), (3, 2, 1), (3, 1, 2), (1, 2, 1)])
def test_folded_frozen_bn_equals_conv_then_norm(kernel, stride, dilation):
    c = conv(6, 10, kernel, stride=stride, dilation=dilation, rngs=nnx.Rngs(0))
    bn = random_frozen_bn(10, kernel + stride + dilation)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 11, 6))
    with jax.default_matmul_precision("highest"):
        folded, reference = bn.after_conv(c, x), bn(c(x))
    assert folded.shape == reference.shape
    np.testing.assert_allclose(folded, reference, rtol=1e-5, atol=1e-5)


def test_folded_conv_follows_the_compute_dtype():
    c = conv(4, 8, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    bn = random_frozen_bn(8, 3)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 8, 8, 4))
    out = bn.after_conv(c, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(bn(c(x)), np.float32),
                               rtol=0.05, atol=0.1)


def test_group_norm_after_conv_is_norm_of_conv():
    c = conv(4, 8, 3, rngs=nnx.Rngs(0))
    gn = make_norm("group", 8, 1e-5, groups=4, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 4))
    np.testing.assert_array_equal(gn.after_conv(c, x), gn(c(x)))


def test_resnet_gradients_reach_the_folded_kernels():
    model = ResNet((1, 1), width=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(4), (1, 32, 32, 3))

    def loss(m):
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss)(model)
    assert float(jnp.abs(grads.conv1.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads.layer1[0].conv1.kernel[...]).sum()) > 0


def random_frozen_bns(model, seed):
    """Give every FrozenBatchNorm of ``model`` random statistics (in place)."""
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if isinstance(module, FrozenBatchNorm):
            fresh = random_frozen_bn(module.weight[...].shape[0], seed + index)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(module, name)[...] = getattr(fresh, name)[...]


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_folded_resnet_computes_the_unfolded_one(dtype):
    """fold_norms (inference) gives the outputs of the per-call fold, every BatchNorm
    of the DC5 layout folded (strided, dilated, downsampling convolutions), with
    kernels stored (C_out, kh, kw, C_in) in the compute dtype."""
    model = ResNet((1, 2), width=4, dilation=True, dtype=dtype, rngs=nnx.Rngs(0))
    random_frozen_bns(model, 10)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 32, 40, 3))
    with jax.default_matmul_precision("highest"):
        want = model(x)
        kernel = model.layer2[1].conv2.kernel[...]  # (3, 3, 8, 8) HWIO, dilation 2
        folded = nnx.clone(model)
        folded.fold_norms()
        got = folded(x)
    assert not any(isinstance(m, FrozenBatchNorm) for _, m in nnx.iter_modules(folded))
    assert any(isinstance(m, FrozenBatchNorm) for _, m in nnx.iter_modules(model)), "model kept"
    assert folded.layer2[1].conv2.kernel[...].shape == (kernel.shape[3], *kernel.shape[:3])
    assert folded.layer2[1].conv2.kernel[...].dtype == (dtype or jnp.float32)
    assert folded.layer2[1].conv2.dilation == (2, 2)
    assert got.dtype == want.dtype
    if dtype is None:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # the same bf16 products: the kernels were cast from the same fp32 folds
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=2e-2, atol=2e-2)


def test_folded_resnet_forward_does_no_per_call_fold():
    """The folded network's jitted forward pass has no norm arithmetic left: no rsqrt,
    no multiplication, no transpose (the unfolded one folds and transposes every kernel
    on every call)."""
    model = ResNet((1, 1), width=4, rngs=nnx.Rngs(0))
    x = jnp.zeros((1, 32, 32, 3))

    def primitives(m):
        graphdef, state = nnx.split(m)
        jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
        return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}

    assert {"rsqrt", "mul"} <= primitives(model)
    folded = nnx.clone(model)
    folded.fold_norms()
    assert not {"rsqrt", "mul", "transpose"} & primitives(folded)


def test_group_norm_resnet_folds_nothing():
    model = ResNet((1, 1), width=8, norm="group", norm_groups=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(6), (1, 32, 32, 3))
    folded = nnx.clone(model)
    folded.fold_norms()
    assert jax.tree.structure(nnx.state(folded)) == jax.tree.structure(nnx.state(model))
    np.testing.assert_array_equal(folded(x), model(x))
