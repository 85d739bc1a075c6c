"""DenseNet-121, as torchvision builds it.

Huang, Liu, van der Maaten and Weinberger, "Densely connected convolutional networks",
CVPR 2017 (DenseNet-BC, Table 1); the reference is torchvision's ``densenet121``
(pytorch/vision ``torchvision/models/densenet.py``, ``memory_efficient=False``).

A 7x7 stride-2 stem of 64 maps with BatchNorm, ReLU and a 3x3 stride-2 max pool; four dense
blocks of 6, 12, 24 and 16 layers, each layer BN-ReLU-1x1 conv (bn_size x growth = 128 maps)
then BN-ReLU-3x3 conv (growth 32 maps) concatenated onto its input; between blocks a
transition BN-ReLU-1x1 conv halving the maps (compression 0.5) and a 2x2 average pool; a
final BatchNorm and ReLU, global average pooling and the classifier. Init as torchvision:
Kaiming-normal (fan-in) kernels, PyTorch's default classifier kernel, zero classifier bias.
Deviation from the paper: none beyond torchvision's (no dropout, ``drop_rate`` 0). Module
names follow torchvision's (``denseblock1/denselayer1/norm1`` ...), so conversion is a
renaming. Inputs from 29x29 up work.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.conv import Conv
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import (check_input, min_input_size, torch_batch_norm,
                                  torch_default_kernel_init)
from jaxcnn.models.registry import register
from jaxcnn.models.torch_convert import register_converter

# Table 1 of the paper, DenseNet-121: layers per dense block.
BLOCK_CONFIG_121 = (6, 12, 24, 16)
GROWTH_RATE = 32
STEM_WIDTH = 64
BN_SIZE = 4  # the bottleneck 1x1 convolution has bn_size * growth_rate maps
COMPRESSION = 0.5  # transitions keep this fraction of the maps
STEM = ((7, 2, 3), (3, 2, 1))  # (kernel, stride, padding) of the stem conv and max pool
TRANSITION_POOL = (2, 2, 0)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bottleneck), BN-ReLU-conv3x3 (growth maps); returns the new maps."""

    growth_rate: int
    bn_size: int
    kernel_init: Callable[..., Any]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = torch_batch_norm(train, name="norm1")(x, relu=True)
        x = Conv(self.bn_size * self.growth_rate, (1, 1), use_bias=False,
                 kernel_init=self.kernel_init, name="conv1")(x)
        x = torch_batch_norm(train, name="norm2")(x, relu=True)
        return Conv(self.growth_rate, (3, 3), padding=1, use_bias=False,
                    kernel_init=self.kernel_init, name="conv2")(x)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed the concatenation of all earlier maps."""

    num_layers: int
    growth_rate: int
    bn_size: int
    kernel_init: Callable[..., Any]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for index in range(self.num_layers):
            new = DenseLayer(self.growth_rate, self.bn_size, self.kernel_init,
                             name=f"denselayer{index + 1}")(x, train)
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to ``features`` maps, then 2x2 average pooling."""

    features: int
    kernel_init: Callable[..., Any]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = torch_batch_norm(train, name="norm")(x, relu=True)
        x = Conv(self.features, (1, 1), use_bias=False, kernel_init=self.kernel_init,
                 name="conv")(x)
        window = TRANSITION_POOL[:1] * 2
        return nn.avg_pool(x, window, strides=window)


class DenseNet(nn.Module):
    """DenseNet-BC (torchvision layout).

    Attributes:
      num_classes: size of the classifier.
      block_config: layers per dense block.
      growth_rate: maps each dense layer adds.
      stem_width: maps of the stem convolution.
      bn_size: bottleneck width as a multiple of ``growth_rate``.
      compression: fraction of the maps a transition keeps.
      model_name: registry name, for error messages.
      in_channels: channel count of the images.
      kernel_init: initialiser of the convolution kernels (Kaiming normal, fan-in).
      dense_init: initialiser of the classifier kernel (PyTorch's default).
    """

    num_classes: int = 1000
    block_config: Sequence[int] = BLOCK_CONFIG_121
    growth_rate: int = GROWTH_RATE
    stem_width: int = STEM_WIDTH
    bn_size: int = BN_SIZE
    compression: float = COMPRESSION
    model_name: str = "densenet121"
    in_channels: int = 3
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    dense_init: Callable[..., Any] = torch_default_kernel_init()

    def min_size(self) -> int:
        return min_input_size(list(STEM) + [TRANSITION_POOL] * (len(self.block_config) - 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(self.model_name, x, channels=self.in_channels, min_size=self.min_size())
        (kernel, stride, pad), (pool, pool_stride, pool_pad) = STEM
        x = Conv(self.stem_width, (kernel, kernel), (stride, stride), padding=pad,
                 use_bias=False, kernel_init=self.kernel_init, name="conv0")(x)
        x = torch_batch_norm(train, name="norm0")(x, relu=True)
        x = nn.max_pool(x, (pool, pool), strides=(pool_stride, pool_stride),
                        padding=((pool_pad, pool_pad), (pool_pad, pool_pad)))
        for index, num_layers in enumerate(self.block_config):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.kernel_init,
                           name=f"denseblock{index + 1}")(x, train)
            if index + 1 < len(self.block_config):
                x = Transition(int(x.shape[-1] * self.compression), self.kernel_init,
                               name=f"transition{index + 1}")(x, train)
        x = torch_batch_norm(train, name="norm5")(x, relu=True)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, kernel_init=self.dense_init,
                        bias_init=nn.initializers.zeros, name="head")(x)


DenseNet121 = functools.partial(DenseNet, block_config=BLOCK_CONFIG_121, growth_rate=32,
                                stem_width=64, model_name="densenet121")

register(
    "densenet121",
    DenseNet121,
    paper="Huang et al., Densely connected convolutional networks, CVPR 2017",
    input_shape=(224, 224, 3),
    num_params=7_978_856,
    num_classes=1000,
    top1=74.434,
    reference="torchvision.models.densenet121",
)


def _rename(weights, variables: dict, path: tuple[str, ...], torch_prefix: str) -> None:
    """Fills the conv or BatchNorm at ``path`` from ``torch_prefix`` (same layer names)."""
    params, stats = variables["params"], variables["batch_stats"]
    for key in path[:-1]:
        params, stats = params.setdefault(key, {}), stats.setdefault(key, {})
    if path[-1].startswith("conv"):
        params[path[-1]] = weights.conv(torch_prefix, bias=False)
    else:
        params[path[-1]], stats[path[-1]] = weights.batchnorm(torch_prefix)


@register_converter("densenet121")
def convert_densenet(weights, block_config: Sequence[int] = BLOCK_CONFIG_121,
                     **model_kwargs) -> dict:
    """torchvision DenseNet -> jaxcnn DenseNet: ``features.a.b.c`` becomes ``a/b/c``."""
    variables: dict = {"params": {}, "batch_stats": {}}
    layers = [("conv0",), ("norm0",)]
    for block, num_layers in enumerate(block_config, start=1):
        for layer in range(1, num_layers + 1):
            for name in ("norm1", "conv1", "norm2", "conv2"):
                layers.append((f"denseblock{block}", f"denselayer{layer}", name))
        if block < len(block_config):
            layers += [(f"transition{block}", "norm"), (f"transition{block}", "conv")]
    layers.append(("norm5",))
    for path in layers:
        _rename(weights, variables, path, "features." + ".".join(path))
    variables["params"]["head"] = weights.dense("classifier")
    weights.check_all_used()
    return variables
