"""LeNet-5 in its modern form.

LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to document recognition",
Proc. IEEE 86(11), 1998. The modern form (as taught in d2l.ai and most courses) keeps the
paper's layer sizes, C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output 10, and swaps in ReLU,
max pooling, full C3 connectivity and a softmax output. Deviation from the paper: exactly
those swaps; the 1998 network as published is ``lenet5_1998``.

On 28x28 inputs (MNIST) C1 pads by 2 so that every later layer sees the sizes of the paper's
32x32 field (C1 28x28, S2 14x14, C3 10x10, S4 5x5); on 32x32 inputs it does not pad.
Parameters: 61,706 for 10 classes, on either input size.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.layers import check_input
from jaxcnn.models.registry import register

# (features, kernel) of the two convolutions and the widths of the hidden dense layers.
CONV_LAYERS = ((6, 5), (16, 5))
DENSE_LAYERS = (120, 84)
PAPER_FIELD = 32  # the paper's input size; smaller inputs are zero-padded up to it by C1
MIN_SIZE = 28


class LeNet5(nn.Module):
    """Modern LeNet-5: two conv/max-pool stages and three dense layers, ReLU.

    Attributes:
      num_classes: size of the output layer.
      conv1_padding: C1's zero padding; ``None`` pads inputs smaller than 32x32 up to the
        paper's field (2 on 28x28).
      kernel_init: initialiser of every kernel (Glorot uniform, the usual modern choice).
    """

    num_classes: int = 10
    conv1_padding: int | None = None
    kernel_init: Callable[..., Any] = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input("lenet5", x, channels=None, min_size=MIN_SIZE)
        pad = self.conv1_padding
        if pad is None:
            pad = max(0, (PAPER_FIELD - min(x.shape[1], x.shape[2])) // 2)
        for index, (features, kernel) in enumerate(CONV_LAYERS):
            padding = pad if index == 0 else 0
            x = nn.Conv(features, (kernel, kernel), padding=padding,
                        kernel_init=self.kernel_init, name=f"conv{index + 1}")(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for index, width in enumerate(DENSE_LAYERS):
            x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init, name=f"fc{index + 1}")(x))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)


register(
    "lenet5",
    LeNet5,
    paper="LeCun et al., Gradient-based learning applied to document recognition, 1998",
    input_shape=(28, 28, 1),
    num_params=61_706,
    reference="d2l.ai LeNet (ReLU, max pooling)",
)

