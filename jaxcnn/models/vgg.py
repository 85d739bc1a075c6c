"""VGG-11/13/16/19, with and without BatchNorm, as torchvision builds them.

Simonyan and Zisserman, "Very deep convolutional networks for large-scale image
recognition", ICLR 2015 (configurations A, B, D and E of its Table 1); the reference is
torchvision's ``vgg11`` ... ``vgg19_bn`` (pytorch/vision ``torchvision/models/vgg.py``).

3x3 convolutions with padding 1 and ReLU (BatchNorm between them in the ``_bn`` variants),
2x2 max pools, an adaptive average pool to 7x7, then dense 4096-4096-classes with dropout
0.5 after each hidden layer. Init as torchvision: Kaiming-normal (fan-out) kernels, N(0, 0.01)
dense kernels, zero biases. Deviations from the paper: torchvision's, i.e. the adaptive pool
(the paper evaluates densely instead), BatchNorm in the ``_bn`` variants, no LRN in VGG-11
(configuration A-LRN is not built). Inputs from 32x32 up work (smaller maps than 7x7 are
upsampled by the adaptive pool, as in PyTorch).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jaxcnn.models.conv import Conv
from jaxcnn.models.conv_pool import ConvReluMaxPool
from jaxcnn.models.conv_relu import ConvRelu
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import (adaptive_avg_pool, check_input, max_pool, min_input_size,
                                  nchw_rows_to_nhwc, torch_batch_norm)
from jaxcnn.models.registry import register
from jaxcnn.models.torch_convert import register_converter

# Table 1 of the paper: conv widths in order, "M" for a 2x2 max pool.
CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}
HIDDEN = 4096
DROPOUT = 0.5
POOLED = 7  # the adaptive average pool's output size


class VGG(nn.Module):
    """VGG: stacks of 3x3 convolutions and 2x2 max pools, then three dense layers.

    Attributes:
      num_classes: size of the output layer.
      config: the convolution table, one of ``CONFIGS``.
      batch_norm: BatchNorm after every convolution (torchvision's ``_bn`` variants).
      model_name: registry name, for error messages.
      in_channels: channel count of the images.
      kernel_init: initialiser of the convolution kernels (torchvision: Kaiming normal,
        fan-out, ReLU gain).
      dense_init: initialiser of the dense kernels (torchvision: N(0, 0.01)).
    """

    num_classes: int = 1000
    config: Sequence[int | str] = CONFIGS["D"]
    batch_norm: bool = False
    model_name: str = "vgg16"
    in_channels: int = 3
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    dense_init: Callable[..., Any] = nn.initializers.normal(0.01)

    def min_size(self) -> int:
        return min_input_size([(2, 2, 0) if c == "M" else (3, 1, 1) for c in self.config])

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(self.model_name, x, channels=self.in_channels, min_size=self.min_size())
        index, pooled = 0, False
        for position, width in enumerate(self.config):
            if width == "M":
                if not pooled:  # else the convolution before it pooled already
                    x = max_pool(x, 2)
                pooled = False
                continue
            index += 1
            # Without BatchNorm, a convolution before a pool is one layer with its ReLU and
            # pool (bias, ReLU and pool one CPU kernel each way); same parameters.
            pooled = not self.batch_norm and tuple(self.config[position + 1:position + 2]) == ("M",)
            # Without BatchNorm, the others are one layer with their ReLU (bias and ReLU in the
            # CPU convolution's forward pass).
            conv = functools.partial(ConvReluMaxPool, window=2) if pooled else \
                Conv if self.batch_norm else ConvRelu
            x = conv(width, (3, 3), padding=1, use_bias=True, kernel_init=self.kernel_init,
                     name=f"conv{index}")(x)
            if self.batch_norm:
                x = torch_batch_norm(train, name=f"bn{index}")(x, relu=True)
        if x.shape[1:3] != (POOLED, POOLED):
            x = adaptive_avg_pool(x, POOLED)
        x = x.reshape((x.shape[0], -1))
        for index in (1, 2):
            x = Dense(HIDDEN, kernel_init=self.dense_init, name=f"fc{index}")(x)
            x = nn.relu(x)
            x = nn.Dropout(DROPOUT, deterministic=not train)(x)
        return Dense(self.num_classes, kernel_init=self.dense_init, name="head")(x)


# name: (configuration, batch norm, parameters for 1000 classes, torchvision top-1)
VARIANTS = {
    "vgg11": ("A", False, 132_863_336, 69.02),
    "vgg13": ("B", False, 133_047_848, 69.928),
    "vgg16": ("D", False, 138_357_544, 71.592),
    "vgg19": ("E", False, 143_667_240, 72.376),
    "vgg11_bn": ("A", True, 132_868_840, 70.37),
    "vgg13_bn": ("B", True, 133_053_736, 71.586),
    "vgg16_bn": ("D", True, 138_365_992, 73.36),
    "vgg19_bn": ("E", True, 143_678_248, 74.218),
}

VGG11 = functools.partial(VGG, config=CONFIGS["A"], model_name="vgg11")
VGG13 = functools.partial(VGG, config=CONFIGS["B"], model_name="vgg13")
VGG16 = functools.partial(VGG, config=CONFIGS["D"], model_name="vgg16")
VGG19 = functools.partial(VGG, config=CONFIGS["E"], model_name="vgg19")
VGG11BN = functools.partial(VGG11, batch_norm=True, model_name="vgg11_bn")
VGG13BN = functools.partial(VGG13, batch_norm=True, model_name="vgg13_bn")
VGG16BN = functools.partial(VGG16, batch_norm=True, model_name="vgg16_bn")
VGG19BN = functools.partial(VGG19, batch_norm=True, model_name="vgg19_bn")
_BUILDERS = {"vgg11": VGG11, "vgg13": VGG13, "vgg16": VGG16, "vgg19": VGG19,
             "vgg11_bn": VGG11BN, "vgg13_bn": VGG13BN, "vgg16_bn": VGG16BN, "vgg19_bn": VGG19BN}

for _name, (_config, _bn, _count, _top1) in VARIANTS.items():
    register(
        _name,
        _BUILDERS[_name],
        paper="Simonyan and Zisserman, Very deep convolutional networks for large-scale image "
              f"recognition, ICLR 2015 (configuration {_config})",
        input_shape=(224, 224, 3),
        num_params=_count,
        num_classes=1000,
        top1=_top1,
        reference=f"torchvision.models.{_name}",
    )


def convert_vgg(weights, variant: str, **model_kwargs) -> dict:
    """torchvision VGG ``variant`` -> jaxcnn VGG, walking the configuration table.

    In torchvision's ``features`` each convolution is followed by a ReLU (and a BatchNorm
    before it in the ``_bn`` variants), each "M" is one max pool. fc1's input rows are
    reordered from PyTorch's NCHW flattening to NHWC.
    """
    config, batch_norm = CONFIGS[VARIANTS[variant][0]], VARIANTS[variant][1]
    params, stats = {}, {}
    position, index = 0, 0  # position in torchvision's ``features``
    for width in config:
        if width == "M":
            position += 1
            continue
        index += 1
        params[f"conv{index}"] = weights.conv(f"features.{position}")
        if batch_norm:
            params[f"bn{index}"], stats[f"bn{index}"] = weights.batchnorm(
                f"features.{position + 1}")
        position += 3 if batch_norm else 2
    fc1 = weights.dense("classifier.0")
    fc1["kernel"] = nchw_rows_to_nhwc(fc1["kernel"], config[-2], POOLED, POOLED)
    params.update(fc1=fc1, fc2=weights.dense("classifier.3"), head=weights.dense("classifier.6"))
    weights.check_all_used()
    return {"params": params, "batch_stats": stats} if batch_norm else {"params": params}


for _name in VARIANTS:
    register_converter(_name)(functools.partial(convert_vgg, variant=_name))
