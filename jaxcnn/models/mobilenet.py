"""MobileNetV2, as torchvision builds it.

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted residuals and linear
bottlenecks", CVPR 2018; the reference is torchvision's ``mobilenet_v2`` (pytorch/vision
``torchvision/models/mobilenetv2.py``), width 1.0.

A 3x3 stride-2 stem of 32 maps, the seventeen inverted-residual blocks of the paper's Table 2
(1x1 expansion by t, 3x3 depthwise, linear 1x1 projection; a residual sum where the stride is
1 and the width is kept), a 1x1 convolution to 1280 maps, global average pooling, dropout 0.2
and the classifier. BatchNorm after every convolution, ReLU6 after all but the projections.
Init as torchvision: Kaiming-normal (fan-out) kernels, N(0, 0.01) classifier, zero biases.
Deviation from the paper: none beyond torchvision's (channel counts rounded to multiples of
8 for other widths). Every convolution pads to keep ``ceil(n / stride)``, so any input size
works (3,504,872 parameters at any size for 1000 classes).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.conv import Conv
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import check_input, min_input_size, torch_batch_norm
from jaxcnn.models.registry import register
from jaxcnn.models.torch_convert import register_converter

# Table 2 of the paper: expansion t, output channels c, repeats n, first stride s.
BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_WIDTH = 32
STEM_STRIDE = 2
LAST_WIDTH = 1280
DROPOUT = 0.2
ROUND_TO = 8


def make_divisible(value: float, divisor: int = ROUND_TO) -> int:
    """Rounds a width to the nearest multiple of ``divisor``, losing at most 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm, then ReLU6 unless ``act`` is False."""

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    act: bool = True
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        pad = (self.kernel - 1) // 2
        x = Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                 padding=pad, feature_group_count=self.groups, use_bias=False,
                 kernel_init=self.kernel_init, name="conv")(x)
        x = torch_batch_norm(train, name="bn")(x)
        return nn.relu6(x) if self.act else x


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1), 3x3 depthwise, linear 1x1 projection."""

    features: int
    stride: int
    expansion: int
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        width = int(round(x.shape[-1] * self.expansion))
        y = x
        if self.expansion != 1:
            y = ConvBN(width, kernel_init=self.kernel_init, name="expand")(y, train)
        y = ConvBN(width, 3, self.stride, groups=width, kernel_init=self.kernel_init,
                   name="depthwise")(y, train)
        y = ConvBN(self.features, act=False, kernel_init=self.kernel_init,
                   name="project")(y, train)
        if self.stride == 1 and x.shape[-1] == self.features:
            y = x + y
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision layout).

    Attributes:
      num_classes: size of the classifier.
      width_mult: multiplier of every width (1.0 is the reference network).
      blocks: the block table, ``BLOCKS``.
      dropout: dropout rate before the classifier.
      in_channels: channel count of the images.
      kernel_init: initialiser of the convolution kernels (Kaiming normal, fan-out).
      dense_init: initialiser of the classifier kernel (N(0, 0.01)).
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    blocks: Sequence[tuple[int, int, int, int]] = BLOCKS
    dropout: float = DROPOUT
    in_channels: int = 3
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    dense_init: Callable[..., Any] = nn.initializers.normal(0.01)

    def min_size(self) -> int:
        strides = [STEM_STRIDE] + [stride for *_, stride in self.blocks]
        return min_input_size([(3, s, 1) for s in strides])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input("mobilenet_v2", x, channels=self.in_channels, min_size=self.min_size())
        x = ConvBN(make_divisible(STEM_WIDTH * self.width_mult), 3, STEM_STRIDE,
                   kernel_init=self.kernel_init, name="stem")(x, train)
        index = 0
        for expansion, channels, repeats, stride in self.blocks:
            for repeat in range(repeats):
                index += 1
                x = InvertedResidual(make_divisible(channels * self.width_mult),
                                     stride if repeat == 0 else 1, expansion,
                                     kernel_init=self.kernel_init, name=f"block{index}")(x, train)
        last = make_divisible(LAST_WIDTH * max(1.0, self.width_mult))
        x = ConvBN(last, kernel_init=self.kernel_init, name="last")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return Dense(self.num_classes, kernel_init=self.dense_init, name="head")(x)


MobileNetV2_100 = functools.partial(MobileNetV2, width_mult=1.0)

register(
    "mobilenet_v2",
    MobileNetV2_100,
    paper="Sandler et al., MobileNetV2: Inverted residuals and linear bottlenecks, CVPR 2018",
    input_shape=(224, 224, 3),
    num_params=3_504_872,
    num_classes=1000,
    top1=71.878,
    reference="torchvision.models.mobilenet_v2",
)


def _convbn(weights, prefix: str) -> tuple[dict, dict]:
    bn_params, bn_stats = weights.batchnorm(f"{prefix}.1")
    return ({"conv": weights.conv(f"{prefix}.0", bias=False), "bn": bn_params},
            {"bn": bn_stats})


@register_converter("mobilenet_v2")
def convert_mobilenet_v2(weights, blocks: Sequence = BLOCKS, **model_kwargs) -> dict:
    """torchvision MobileNetV2 -> ``mobilenet_v2``.

    torchvision's ``features`` are the stem (0), the blocks (1..17) and the last 1x1
    convolution (18); in a block, ``conv`` holds Conv-BN-ReLU6 units for the expansion (when
    t > 1) and the depthwise step, then the projection's bare Conv2d and BatchNorm.
    """
    params, stats = {}, {}
    params["stem"], stats["stem"] = _convbn(weights, "features.0")
    index = 0
    for expansion, _, repeats, _ in blocks:
        for _ in range(repeats):
            index += 1
            prefix = f"features.{index}.conv"
            units = ("expand", "depthwise") if expansion != 1 else ("depthwise",)
            block_params, block_stats = {}, {}
            for unit, name in enumerate(units):
                block_params[name], block_stats[name] = _convbn(weights, f"{prefix}.{unit}")
            bn_params, bn_stats = weights.batchnorm(f"{prefix}.{len(units) + 1}")
            block_params["project"] = {"conv": weights.conv(f"{prefix}.{len(units)}", bias=False),
                                       "bn": bn_params}
            block_stats["project"] = {"bn": bn_stats}
            params[f"block{index}"], stats[f"block{index}"] = block_params, block_stats
    params["last"], stats["last"] = _convbn(weights, f"features.{index + 1}")
    params["head"] = weights.dense("classifier.1")
    weights.check_all_used()
    return {"params": params, "batch_stats": stats}
