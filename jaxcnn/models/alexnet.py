"""AlexNet: torchvision's single-tower form and the 2012 paper's two-group form.

Krizhevsky, Sutskever and Hinton, "ImageNet classification with deep convolutional neural
networks", NeurIPS 2012 (``alexnet_2012``), and torchvision's ``alexnet`` (pytorch/vision
``torchvision/models/alexnet.py``), which follows the single-GPU variant of Krizhevsky,
"One weird trick for parallelizing convolutional neural networks", 2014 (``alexnet``).

``alexnet`` equals torchvision's: 64-192-384-256-256 maps, no normalisation, an adaptive
average pool to 6x6, dropout before each hidden dense layer, PyTorch's default init;
61,100,840 parameters. ``alexnet_2012`` is the paper's: 96-256-384-384-256 maps, the two GPU
halves as two groups in conv2, conv4 and conv5, local response normalisation after conv1 and
conv2, overlapping 3/2 max pooling, dropout after each hidden dense layer, weights from
N(0, 0.01) and biases 1 in conv2, conv4, conv5 and the hidden dense layers (0 elsewhere);
60,965,224 parameters. Deviation from the paper: none in the layers; the input is 227x227
(the paper says 224, but 11x11/4 convolution only gives its 55x55 maps from 227). Inputs of
other sizes work: torchvision's pools to 6x6 whatever the size, the paper's flattens what
conv5 gives, so its fc1 fan-in follows the input size.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax

from jaxcnn.models.conv_relu import ConvRelu
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import (adaptive_avg_pool, check_input, local_response_norm,
                                  min_input_size, nchw_rows_to_nhwc, torch_default_bias_init,
                                  torch_default_kernel_init)
from jaxcnn.models.registry import register
from jaxcnn.models.torch_convert import register_converter


class ConvSpec(NamedTuple):
    features: int
    kernel: int
    stride: int
    padding: int
    groups: int = 1
    lrn: bool = False  # local response normalisation after the ReLU
    pool: bool = False  # 3x3 stride-2 max pool after that
    bias: float | None = None  # constant bias init; None is PyTorch's default


TORCHVISION_CONVS = (
    ConvSpec(64, 11, 4, 2, pool=True),
    ConvSpec(192, 5, 1, 2, pool=True),
    ConvSpec(384, 3, 1, 1),
    ConvSpec(256, 3, 1, 1),
    ConvSpec(256, 3, 1, 1, pool=True),
)
PAPER_CONVS = (
    ConvSpec(96, 11, 4, 0, lrn=True, pool=True, bias=0.0),
    ConvSpec(256, 5, 1, 2, groups=2, lrn=True, pool=True, bias=1.0),
    ConvSpec(384, 3, 1, 1, bias=0.0),
    ConvSpec(384, 3, 1, 1, groups=2, bias=1.0),
    ConvSpec(256, 3, 1, 1, groups=2, pool=True, bias=1.0),
)
HIDDEN = 4096  # width of fc1 and fc2
POOL = (3, 2)  # overlapping pooling: 3x3 windows, stride 2
DROPOUT = 0.5
TORCHVISION_POOLED = 6  # torchvision's adaptive average pool output (6x6)


class AlexNet(nn.Module):
    """AlexNet: five convolutions, three max pools, three dense layers, ReLU.

    Attributes:
      num_classes: size of the output layer.
      convs: the convolution table (``TORCHVISION_CONVS`` or ``PAPER_CONVS``).
      pooled_size: adaptive average pooling of conv5's maps to this size, or ``None``.
      dropout_after: dropout after each hidden dense layer (the paper) instead of before
        (torchvision).
      dense_bias: constant bias init of the hidden dense layers (``None``: PyTorch default).
      model_name: registry name, for error messages.
      in_channels: channel count of the images.
      kernel_init: initialiser of every kernel (PyTorch's default for ``alexnet``,
        N(0, 0.01) for ``alexnet_2012``).
    """

    num_classes: int = 1000
    convs: Sequence[ConvSpec] = TORCHVISION_CONVS
    pooled_size: int | None = TORCHVISION_POOLED
    dropout_after: bool = False
    dense_bias: float | None = None
    model_name: str = "alexnet"
    in_channels: int = 3
    kernel_init: Callable[..., Any] = torch_default_kernel_init()

    def min_size(self) -> int:
        windows = []
        for spec in self.convs:
            windows.append((spec.kernel, spec.stride, spec.padding))
            if spec.pool:
                windows.append((*POOL, 0))
        return min_input_size(windows)

    def _bias_init(self, constant: float | None, fan_in: int):
        if constant is None:
            return torch_default_bias_init(fan_in)
        return nn.initializers.constant(constant)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(self.model_name, x, channels=self.in_channels, min_size=self.min_size())
        for index, spec in enumerate(self.convs):
            fan_in = x.shape[-1] // spec.groups * spec.kernel ** 2
            x = ConvRelu(spec.features, (spec.kernel, spec.kernel), (spec.stride, spec.stride),
                         padding=spec.padding, feature_group_count=spec.groups,
                         kernel_init=self.kernel_init,
                         bias_init=self._bias_init(spec.bias, fan_in),
                         name=f"conv{index + 1}")(x)
            if spec.lrn:
                x = local_response_norm(x)
            if spec.pool:
                x = nn.max_pool(x, (POOL[0],) * 2, strides=(POOL[1],) * 2)
        if self.pooled_size is not None and x.shape[1:3] != (self.pooled_size,) * 2:
            x = adaptive_avg_pool(x, self.pooled_size)
        x = x.reshape((x.shape[0], -1))
        for index in range(2):
            if not self.dropout_after:
                x = nn.Dropout(DROPOUT, deterministic=not train)(x)
            x = Dense(HIDDEN, kernel_init=self.kernel_init,
                         bias_init=self._bias_init(self.dense_bias, x.shape[-1]),
                         name=f"fc{index + 1}")(x)
            x = nn.relu(x)
            if self.dropout_after:
                x = nn.Dropout(DROPOUT, deterministic=not train)(x)
        head_bias = self._bias_init(None if self.dense_bias is None else 0.0, x.shape[-1])
        return Dense(self.num_classes, kernel_init=self.kernel_init, bias_init=head_bias,
                        name="head")(x)


AlexNet2012 = functools.partial(
    AlexNet, convs=PAPER_CONVS, pooled_size=None, dropout_after=True, dense_bias=1.0,
    model_name="alexnet_2012", kernel_init=nn.initializers.normal(0.01))

register(
    "alexnet",
    AlexNet,
    paper="Krizhevsky, One weird trick for parallelizing convolutional neural networks, 2014",
    input_shape=(224, 224, 3),
    num_params=61_100_840,
    num_classes=1000,
    top1=56.522,
    reference="torchvision.models.alexnet",
)
register(
    "alexnet_2012",
    AlexNet2012,
    paper="Krizhevsky, Sutskever and Hinton, ImageNet classification with deep convolutional "
          "neural networks, NeurIPS 2012",
    input_shape=(227, 227, 3),
    num_params=60_965_224,
    num_classes=1000,
    reference="the paper (two groups in conv2/4/5, LRN, overlapping pooling), Caffe's "
              "bvlc_alexnet layer order",
)


@register_converter("alexnet")
def convert_alexnet(weights, **model_kwargs) -> dict:
    """torchvision AlexNet -> ``alexnet``. fc1's rows are reordered from NCHW flattening."""
    conv_indices = (0, 3, 6, 8, 10)  # positions of the convolutions in ``features``
    params = {f"conv{i + 1}": weights.conv(f"features.{k}") for i, k in enumerate(conv_indices)}
    fc1 = weights.dense("classifier.1")
    channels = TORCHVISION_CONVS[-1].features
    fc1["kernel"] = nchw_rows_to_nhwc(fc1["kernel"], channels, TORCHVISION_POOLED,
                                      TORCHVISION_POOLED)
    params.update(fc1=fc1, fc2=weights.dense("classifier.4"), head=weights.dense("classifier.6"))
    weights.check_all_used()
    return {"params": params}
