"""The CIFAR-10 ResNets (20/32/44/56/110 layers) and their plain counterparts.

He, Zhang, Ren and Sun, "Deep residual learning for image recognition", CVPR 2016
(arXiv:1512.03385), section 4.2: a 3x3 convolution with 16 filters, then three stages of
``2n`` 3x3 layers with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps (subsampling by
stride-2 convolutions), global average pooling and a 10-way dense layer; ``6n + 2`` weighted
layers. There is no reference implementation from the authors; parameter counts match the
paper's (0.27M, 0.46M, 0.66M, 0.85M, 1.7M) and those of the widely used re-implementations.

Shortcuts are the paper's option A, parameter-free: identity, and where a stage starts, the
input subsampled with stride 2 and its new channels zero, so a plain network (``plain*``, no
shortcuts) has exactly as many parameters as its residual one. The blocks are
:class:`jaxcnn.models.resnet.BasicBlock`.

CIFAR-10 test errors reported in the paper (Table 6): ResNet-20 8.75%, ResNet-32 7.51%,
ResNet-44 7.17%, ResNet-56 6.97%, ResNet-110 6.43% (best of 5 runs; mean 6.61%).
Deviations from the paper: none in the network; option A puts the zero channels after the
subsampled ones (the paper does not say where). Initialisation: He normal (fan_out), as for
the ImageNet ResNets. Any input size works (every layer keeps at least one output).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import check_input
from jaxcnn.models.registry import register
from jaxcnn.models.resnet import (
    KAIMING_NORMAL, PAPER, TORCH_LINEAR_INIT, BasicBlock, batch_norm, conv, model_name,
    residual_stages,
)

STAGE_WIDTHS = (16, 32, 64)
STEM_FEATURES = 16  # the first 3x3 convolution
# n, blocks of two 3x3 layers per stage (depth 6n + 2), for each depth of the paper.
BLOCKS_PER_STAGE = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
# Table 6 of the paper, CIFAR-10 test error in percent.
TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


class CifarResNet(nn.Module):
    """The paper's CIFAR network: 3x3 conv 16, three stages of ``n`` basic blocks, dense.

    Attributes:
      n: basic blocks per stage (depth ``6n + 2``).
      num_classes: size of the output layer.
      shortcut: "zero_pad" (the paper's option A) or "none" (plain network); "projection"
        (option B) also works and adds parameters.
      kernel_init: initialiser of the convolution kernels (He normal, fan_out).
    """

    n: int
    num_classes: int = 10
    shortcut: str = "zero_pad"
    kernel_init: Callable[..., Any] = KAIMING_NORMAL

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        sizes = (self.n,) * len(STAGE_WIDTHS)
        check_input(model_name(self.shortcut, BasicBlock, sizes, stem_layers=2), x,
                    channels=None, min_size=1)
        x = conv(STEM_FEATURES, 3, 1, self.kernel_init, name="conv1")(x)
        x = batch_norm(train, name="bn1")(x, relu=True)
        x = residual_stages(x, STAGE_WIDTHS, sizes, BasicBlock, self.shortcut,
                            self.kernel_init, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, kernel_init=TORCH_LINEAR_INIT, name="fc")(x)


CIFAR_BUILDERS = {}
for _depth, _n in BLOCKS_PER_STAGE.items():
    for _kind, _prefix in (("zero_pad", "resnet"), ("none", "plain")):
        _builder = functools.partial(CifarResNet, n=_n, shortcut=_kind)
        CIFAR_BUILDERS[f"{_prefix}{_depth}"] = _builder
        register(
            f"{_prefix}{_depth}", _builder, paper=PAPER + ", section 4.2 (CIFAR-10)",
            input_shape=(32, 32, 3), num_params=PARAMS[_depth], num_classes=10,
            reference="the paper's section 4.2 (no code from the authors); "
                      + ("option A shortcuts" if _kind == "zero_pad" else "no shortcuts"),
        )

ResNet20, ResNet32, ResNet44, ResNet56, ResNet110 = (
    CIFAR_BUILDERS[f"resnet{d}"] for d in BLOCKS_PER_STAGE)
Plain20, Plain32, Plain44, Plain56, Plain110 = (
    CIFAR_BUILDERS[f"plain{d}"] for d in BLOCKS_PER_STAGE)
