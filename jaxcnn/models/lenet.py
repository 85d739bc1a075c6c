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

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.conv import NHWC, Conv, conv_general_dilated, plain_lax_active
from jaxcnn.models.conv_pool import ConvReluMaxPool
from jaxcnn.models.dense import Dense
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
            # Conv, ReLU and 2x2 max pool (bias, ReLU and pool one CPU kernel each way)
            x = ConvReluMaxPool(features, (kernel, kernel), padding=padding, window=2,
                                kernel_init=self.kernel_init, name=f"conv{index + 1}")(x)
        x = x.reshape((x.shape[0], -1))
        for index, width in enumerate(DENSE_LAYERS):
            x = nn.relu(Dense(width, kernel_init=self.kernel_init, name=f"fc{index + 1}")(x))
        return Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)


register(
    "lenet5",
    LeNet5,
    paper="LeCun et al., Gradient-based learning applied to document recognition, 1998",
    input_shape=(28, 28, 1),
    num_params=61_706,
    reference="d2l.ai LeNet (ReLU, max pooling)",
)


# --- LeNet-5 as published (LeCun et al. 1998, section II.B) ------------------------------------

# Table I of the paper: the S2 maps (0-5) each C3 map (0-15) is connected to.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)
# (kind, features, kernel) of the published layers up to F6; the output layer follows.
LAYERS_1998 = (("conv", 6, 5), ("subsample", 6, 2), ("partial_conv", 16, 5),
               ("subsample", 16, 2), ("conv", 120, 5), ("dense", 84, None))
MIN_SIZE_1998 = 28  # 28x28 digits are padded into the paper's 32x32 field


def scaled_tanh(x: jax.Array) -> jax.Array:
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (appendix A)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


def lecun98_uniform(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """The paper's initialisation: uniform in +-2.4/F_i, F_i the unit's fan-in (appendix A)."""
    fan_in = 1
    for n in shape[:-1]:
        fan_in *= n
    return jax.random.uniform(key, shape, dtype, -2.4 / fan_in, 2.4 / fan_in)


class TrainableSubsample(nn.Module):
    """S2/S4: each map's non-overlapping 2x2 sums times a trainable coefficient, plus a bias.

    The coefficient is initialised as a weight of a unit with 4 inputs (its fan-in).
    """

    window: int = 2
    kernel_init: Callable[..., Any] = lecun98_uniform

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        maps, area = x.shape[-1], self.window * self.window
        coefficient = self.param(
            "coefficient", lambda key, shape: self.kernel_init(key, (area, *shape))[0], (maps,))
        bias = self.param("bias", nn.initializers.zeros, (maps,))
        window = (self.window, self.window)
        sums = nn.avg_pool(x, window, strides=window) * area
        return sums * coefficient + bias


class PartialConv(nn.Module):
    """C3: a convolution in which output map ``j`` sees only the input maps ``table[j]``.

    Each connection (input map i -> output map j) has its own 5x5 kernel, so the parameters
    are exactly those of the connections present. Training computes it as a full 6 -> 16
    convolution whose kernel is zero off the table (fast); within
    :func:`jaxcnn.models.conv.plain_lax_layers` (the summary's MAC count, receptive fields)
    as the connections present only: the selected input maps gathered, convolved depthwise
    and summed per output map.
    """

    table: Sequence[Sequence[int]] = C3_TABLE
    kernel: int = 5
    kernel_init: Callable[..., Any] = lecun98_uniform

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        sources = [i for row in self.table for i in row]
        k = self.kernel

        def init(key, shape):  # per output map, as a kernel of fan-in len(row) * k * k
            keys = jax.random.split(key, len(self.table))
            blocks = [self.kernel_init(sub, (k, k, len(row), 1)).reshape(k, k, 1, len(row))
                      for sub, row in zip(keys, self.table)]
            return jnp.concatenate(blocks, axis=-1)

        kernel = self.param("kernel", init, (k, k, 1, len(sources)))
        bias = self.param("bias", nn.initializers.zeros, (len(self.table),))
        if not plain_lax_active():
            # The same sums as one full convolution whose kernel is zero off the table: 1.6x
            # the multiply-accumulates, but XLA:CPU's grouped convolution below made a
            # training step 17x slower than LeNet-5's (292 against 17 ms for a batch of 64).
            targets = [j for j, row in enumerate(self.table) for _ in row]
            full = jnp.zeros((k, k, x.shape[-1], len(self.table)), kernel.dtype)
            full = full.at[:, :, jnp.array(sources), jnp.array(targets)].set(kernel[:, :, 0, :])
            return conv_general_dilated(x, full, (1, 1), "VALID", dimension_numbers=NHWC) + bias
        y = jax.lax.conv_general_dilated(  # the connections present only (summary, receptive)
            x[..., jnp.array(sources)], kernel, (1, 1), "VALID", dimension_numbers=NHWC,
            feature_group_count=len(sources))
        starts = [0]
        for row in self.table:
            starts.append(starts[-1] + len(row))
        maps = [y[..., a:b].sum(axis=-1) for a, b in zip(starts[:-1], starts[1:])]
        return jnp.stack(maps, axis=-1) + bias


class LeNet5_1998(nn.Module):
    """LeNet-5 as published in LeCun, Bottou, Bengio and Haffner, Proc. IEEE 1998, fig. 2.

    C1 6@5x5, S2 trainable 2x2 subsampling, C3 16@5x5 with Table I's partial connections,
    S4, C5 120@5x5, F6 84, each followed by the scaled tanh 1.7159 tanh(2a/3); weights drawn
    uniformly in +-2.4/fan-in. Per-layer parameters: C1 156, S2 12, C3 1,516, S4 32,
    C5 48,120, F6 10,164 (60,000 in all).

    Deviation from the paper: the output is a plain dense 84 -> num_classes layer returning
    logits (850 parameters for 10 classes, 60,850 in all) instead of the Euclidean RBF units
    with fixed 7x12 bitmap codes and the paper's MAP loss. Inputs smaller than 32x32 (28x28
    MNIST) are padded into the paper's 32x32 field with ``pad_value`` (the paper normalises
    the background to -0.1, so pass ``pad_value=-0.1`` when using its normalisation); larger
    inputs give C5 more than 1x1 outputs, flattened into F6.

    Attributes:
      num_classes: size of the output layer.
      in_channels: channel count of the images.
      pad_value: value of the padding that brings small inputs to 32x32.
      kernel_init: initialiser of every weight (the paper's +-2.4/F_i uniform).
    """

    num_classes: int = 10
    in_channels: int = 1
    pad_value: float = 0.0
    kernel_init: Callable[..., Any] = lecun98_uniform

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input("lenet5_1998", x, channels=self.in_channels, min_size=MIN_SIZE_1998)
        pads = [max(0, PAPER_FIELD - n) for n in x.shape[1:3]]
        if any(pads):
            x = jnp.pad(x, ((0, 0), (pads[0] // 2, pads[0] - pads[0] // 2),
                            (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)),
                        constant_values=self.pad_value)
        init = self.kernel_init
        names = iter(("C1", "S2", "C3", "S4", "C5", "F6"))
        for kind, features, kernel in LAYERS_1998:
            name = next(names)
            if kind == "conv":
                x = Conv(features, (kernel, kernel), padding="VALID", kernel_init=init,
                         name=name)(x)
            elif kind == "subsample":
                x = TrainableSubsample(kernel, kernel_init=init, name=name)(x)
            elif kind == "partial_conv":
                x = PartialConv(C3_TABLE, kernel, kernel_init=init, name=name)(x)
            else:
                x = Dense(features, kernel_init=init, name=name)(x.reshape((x.shape[0], -1)))
            x = scaled_tanh(x)
        return Dense(self.num_classes, kernel_init=init, name="head")(x)


register(
    "lenet5_1998",
    LeNet5_1998,
    paper="LeCun et al., Gradient-based learning applied to document recognition, 1998",
    input_shape=(32, 32, 1),
    num_params=60_850,
    reference="the paper as published (Table I C3 connections, trainable subsampling, "
              "scaled tanh); 60,000 up to F6 plus a dense 84->10 output (850) instead of RBF",
)
