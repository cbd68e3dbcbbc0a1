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
