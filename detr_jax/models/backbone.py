"""ResNet v1.5 backbone (torchvision layout) with frozen BatchNorm, NHWC.

``norm="frozen_bn"`` (the default, DETR's) uses fixed BatchNorm statistics, as the
converted ImageNet-pretrained checkpoints need. ``norm="group"`` puts trainable
GroupNorm in the same places (``bn1``, ``bn2``, ...) for backbones trained from scratch,
such as the demo model's: frozen identity statistics would leave such a ResNet without
any normalization. With GroupNorm the last norm of every residual branch starts at
scale 0, so each block starts as the identity.

The stride sits on the 3x3 convolution (v1.5). With ``dilation=True`` (DC5) the last
stage keeps stride 16: its first block has stride 1 and dilation 1, the later blocks
dilation 2 and padding 2, as torchvision's ``replace_stride_with_dilation``. All
convolutions use explicit symmetric padding, never 'SAME'.

For inference, ``ResNet.fold_norms()`` folds each frozen BatchNorm into the convolution
before it once (``FoldedConv``: the scaled kernel stored in cuDNN's OHWI order and the
shift as a bias), so that a jitted forward pass does not fold and transpose every kernel
again on every call. Trainable GroupNorms stay as they are.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class Frozen(nnx.Variable):
    """A fixed buffer: loaded from checkpoints, never updated by the optimizer."""


class FrozenBatchNorm(nnx.Module):
    """BatchNorm with fixed statistics: ``x * scale + (b - mean * scale)``,
    ``scale = w * rsqrt(var + eps)`` (DETR's FrozenBatchNorm2d). x: (..., C)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        self.weight = Frozen(jnp.ones((num_features,), jnp.float32))
        self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
        self.running_mean = Frozen(jnp.zeros((num_features,), jnp.float32))
        self.running_var = Frozen(jnp.ones((num_features,), jnp.float32))
        self.eps = eps

    def affine(self) -> tuple[jax.Array, jax.Array]:
        """(scale, shift), float32 (C,)."""
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        return scale, self.bias[...] - self.running_mean[...] * scale

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, shift = self.affine()
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)

    def after_conv(self, conv: nnx.Conv, x: jax.Array) -> jax.Array:
        """``self(conv(x))`` as one convolution: the scale folded into the kernel's output
        channels (in float32, before any cast to the compute dtype), the shift added as
        a bias. XLA then fuses the bias, a residual sum and a ReLU that follow into the
        convolution (cuDNN's fused convolution on GPUs) instead of running each as a
        separate pass over the feature map. x: (B, H, W, C_in) -> (B, H', W', C)."""
        scale, shift = self.affine()
        return folded_conv(conv, x, scale, shift)

    def fold(self, conv: nnx.Conv) -> tuple[nnx.Module, nnx.Module]:
        """(``FoldedConv`` of ``conv`` and this norm, ``NoNorm()``): the pair that computes
        ``after_conv(conv, x)`` with the fold done now rather than on every call."""
        scale, shift = self.affine()
        return FoldedConv.of(conv, scale, shift), NoNorm()


class NoNorm(nnx.Module):
    """The norm interface's identity: ``after_conv(conv, x) = conv(x)`` (the norm of a
    ``FoldedConv``, which holds it already)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x

    def after_conv(self, conv: nnx.Module, x: jax.Array) -> jax.Array:
        return conv(x)

    def fold(self, conv: nnx.Module) -> tuple[nnx.Module, nnx.Module]:
        return conv, self


class FoldedConv(nnx.Module):
    """A convolution with a frozen BatchNorm folded in, for inference: ``conv(x) * scale
    + shift`` as one convolution with the kernel ``kernel * scale`` and the bias
    ``shift``, both computed once (``FoldedConv.of``). The kernel is held as (C_out, kh,
    kw, C_in) (OHWI), the order of cuDNN's NHWC convolutions, in the compute dtype, so a
    jitted call neither transposes nor casts it. x: (B, H, W, C_in) -> (B, H', W', C_out)."""

    def __init__(self, kernel: jax.Array, bias: jax.Array, *, strides, padding, dilation,
                 dtype: Any, precision: Any):
        self.kernel = Frozen(kernel)
        self.bias = Frozen(bias)
        self.strides, self.padding, self.dilation = strides, padding, dilation
        self.dtype, self.precision = dtype, precision

    @classmethod
    def of(cls, conv: nnx.Conv, scale: jax.Array, shift: jax.Array) -> "FoldedConv":
        """The fold of a bias-free 2-D ``conv`` (explicit padding) and the norm's (C_out,)
        float32 ``scale`` and ``shift``: the products are those ``folded_conv`` forms
        on every call, in float32, then cast to ``conv.dtype`` (None: kept in float32)."""
        kernel = conv.kernel[...] * scale
        if conv.dtype is not None:
            kernel = kernel.astype(conv.dtype)
        return cls(jnp.transpose(kernel, (3, 0, 1, 2)), jnp.asarray(shift, jnp.float32),
                   strides=_pair(conv.strides), padding=conv.padding,
                   dilation=_pair(conv.kernel_dilation), dtype=conv.dtype,
                   precision=conv.precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        dtype = self.dtype or jnp.result_type(x.dtype, kernel.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), kernel.astype(dtype), window_strides=self.strides,
            padding=self.padding, rhs_dilation=self.dilation,
            dimension_numbers=("NHWC", "OHWI", "NHWC"), precision=self.precision)
        return y + self.bias[...].astype(y.dtype)


class GroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` with the backbone's norm interface (:meth:`after_conv`)."""

    def after_conv(self, conv: nnx.Conv, x: jax.Array) -> jax.Array:
        """``self(conv(x))``: a trainable norm over groups cannot be folded into the conv."""
        return self(conv(x))

    def fold(self, conv: nnx.Conv) -> tuple[nnx.Module, nnx.Module]:
        """(conv, self): nothing to fold (normalization over groups depends on the input)."""
        return conv, self


def fold_pairs(module: nnx.Module, pairs: tuple[tuple[str, str], ...]) -> None:
    """Replace each (conv, norm) attribute pair of ``module`` by ``norm.fold(conv)``."""
    for conv_name, norm_name in pairs:
        conv_, norm = getattr(module, norm_name).fold(getattr(module, conv_name))
        setattr(module, conv_name, conv_)
        setattr(module, norm_name, norm)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def folded_conv(conv: nnx.Conv, x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """``conv(x) * scale + shift`` computed as ``conv_with(kernel * scale)(x) + shift``
    (the same arithmetic up to rounding). ``conv``: a bias-free 2-D ``nnx.Conv`` with
    explicit padding; scale, shift: (C_out,)."""
    kernel = conv.kernel[...] * scale
    dtype = conv.dtype or jnp.result_type(x.dtype, kernel.dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), window_strides=_pair(conv.strides),
        padding=conv.padding, rhs_dilation=_pair(conv.kernel_dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=conv.precision)
    return y + shift.astype(y.dtype)


def make_norm(kind: str, channels: int, eps: float, groups: int = 8, *,
              zero_scale: bool = False, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """The normalization of one conv: ``FrozenBatchNorm`` or trainable ``GroupNorm``;
    both apply after a conv through ``after_conv(conv, x)``."""
    if kind == "frozen_bn":
        return FrozenBatchNorm(channels, eps)
    if kind == "group":
        import math
        return GroupNorm(channels, num_groups=math.gcd(groups, channels), epsilon=eps,
                         scale_init=(nnx.initializers.zeros_init() if zero_scale
                                     else nnx.initializers.ones_init()), rngs=rngs)
    raise ValueError(f"backbone.norm={kind!r}: choose 'frozen_bn' or 'group'")


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, dilation: int = 1,
         dtype: Any = None, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free convolution with torch's symmetric padding ``dilation * (kernel // 2)``."""
    pad = dilation * (kernel // 2)
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=stride,
                    padding=((pad, pad), (pad, pad)), kernel_dilation=dilation,
                    use_bias=False, dtype=dtype, rngs=rngs)


class Downsample(nnx.Module):
    """1x1 strided projection shortcut (torch ``downsample.0`` conv, ``downsample.1`` BN)."""

    def __init__(self, in_ch, out_ch, stride, eps, dtype, rngs, norm="frozen_bn", groups=8):
        self.conv = conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.bn = make_norm(norm, out_ch, eps, groups, rngs=rngs)

    def __call__(self, x):
        return self.bn.after_conv(self.conv, x)

    def fold_norms(self) -> None:
        """Fold the norm into the conv in place (``fold_pairs``)."""
        fold_pairs(self, (("conv", "bn"),))


class Bottleneck(nnx.Module):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), residual, ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, *, stride: int, dilation: int,
                 downsample: bool, eps: float, dtype: Any, rngs: nnx.Rngs,
                 norm: str = "frozen_bn", groups: int = 8):
        out_ch = planes * self.expansion
        self.conv1 = conv(in_ch, planes, 1, dtype=dtype, rngs=rngs)
        self.bn1 = make_norm(norm, planes, eps, groups, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs)
        self.bn2 = make_norm(norm, planes, eps, groups, rngs=rngs)
        self.conv3 = conv(planes, out_ch, 1, dtype=dtype, rngs=rngs)
        self.bn3 = make_norm(norm, out_ch, eps, groups, zero_scale=True, rngs=rngs)
        self.downsample = (Downsample(in_ch, out_ch, stride, eps, dtype, rngs, norm, groups)
                           if downsample else None)

    def __call__(self, x):
        out = jax.nn.relu(self.bn1.after_conv(self.conv1, x))
        out = jax.nn.relu(self.bn2.after_conv(self.conv2, out))
        out = self.bn3.after_conv(self.conv3, out)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return jax.nn.relu(out + shortcut)

    def fold_norms(self) -> None:
        """Fold each norm into its conv in place (``fold_pairs``), the shortcut's too."""
        fold_pairs(self, (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")))
        if self.downsample is not None:
            self.downsample.fold_norms()


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(3, stride=2, padding=1)``: padding never wins the max."""
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(nnx.Module):
    """ResNet body up to the last stage. Input (B, H, W, 3) -> (B, H/32, W/32, 32*width)
    (H/16 with ``dilation``)."""

    def __init__(self, stages=(3, 4, 6, 3), *, width: int = 64, dilation: bool = False,
                 bn_eps: float = 1e-5, norm: str = "frozen_bn", norm_groups: int = 8,
                 dtype: Any = None, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, width, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                              use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = make_norm(norm, width, bn_eps, norm_groups, rngs=rngs)
        in_ch = width
        current_dilation = 1
        for index, blocks in enumerate(stages):
            planes = width * 2 ** index
            stride = 1 if index == 0 else 2
            previous_dilation = current_dilation
            if dilation and index == len(stages) - 1:
                current_dilation *= stride
                stride = 1
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(
                    in_ch, planes, stride=stride if block == 0 else 1,
                    dilation=previous_dilation if block == 0 else current_dilation,
                    downsample=(block == 0 and (stride != 1 or in_ch != planes * 4)),
                    eps=bn_eps, dtype=dtype, rngs=rngs, norm=norm, groups=norm_groups))
                in_ch = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nnx.List(layer))
        self.num_stages = len(stages)
        self.out_channels = in_ch
        self.stride = 2 ** (len(stages) + 1) // (2 if dilation else 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = max_pool_3x3_s2(jax.nn.relu(self.bn1.after_conv(self.conv1, x)))
        for index in range(self.num_stages):
            for block in getattr(self, f"layer{index + 1}"):
                x = block(x)
        return x

    def fold_norms(self) -> None:
        """Fold every frozen BatchNorm into the convolution before it, in place, for
        inference (module docstring). The outputs stay those of the unfolded network up
        to rounding; the state's structure changes, so fold a copy
        (``detr_jax.models.inference.inference_model``), never a model that trains or
        is saved."""
        fold_pairs(self, (("conv1", "bn1"),))
        for index in range(self.num_stages):
            for block in getattr(self, f"layer{index + 1}"):
                block.fold_norms()
