"""The small case-study networks of the classic CNN lectures, for 28x28 grey digits.

- ``mlp``: the fully connected baseline the lectures start from, 784-500-50-10 with ReLU.
- ``mnist_cnn``: the lectures' first CNN, two unpadded 5x5 convolutions (20 and 40 maps)
  straight into a 100-unit dense layer, with no pooling, so almost all of its 1.6M parameters
  sit in that dense layer (the point of the case study).
- ``keras_cnn``: the Keras ``mnist_cnn`` example (keras-team/keras ``examples/mnist_cnn.py``)
  with 32 maps in both convolutions: two 3x3 convolutions, 2x2 max pooling, dropout 0.25,
  dense 128, dropout 0.5, dense 10.

All use ReLU, Glorot-uniform kernels and zero biases (the Keras defaults the lectures use)
and return logits (the softmax lives in the loss). Deviation from the Keras example:
``keras_cnn`` has 32 maps in its second convolution instead of 64, as the lectures give it.
Other image sizes work; the first dense layer's fan-in follows the size.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jaxcnn.models.conv_relu import ConvRelu
from jaxcnn.models.conv_pool import ConvReluMaxPool
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import check_input, max_pool, min_input_size
from jaxcnn.models.registry import register

# Each network as its layers in order: ("conv", features, kernel), ("pool", window),
# ("dropout", rate), ("dense", width). The output layer (num_classes) follows the table.
MLP_LAYERS = (("dense", 500), ("dense", 50))
MNIST_CNN_LAYERS = (("conv", 20, 5), ("conv", 40, 5), ("dense", 100))
KERAS_CNN_LAYERS = (("conv", 32, 3), ("conv", 32, 3), ("pool", 2), ("dropout", 0.25),
                    ("dense", 128), ("dropout", 0.5))


class SequentialNet(nn.Module):
    """A plain stack of unpadded convolutions, max pools, dropouts and dense layers (ReLU).

    Feature maps are flattened before the first dense layer.

    Attributes:
      layers: the table of layers, as in ``MLP_LAYERS``.
      model_name: the registry name, for error messages.
      num_classes: size of the output layer.
      in_channels: the channel count of the images (1 for the grey digits).
      kernel_init: initialiser of every kernel (Glorot uniform, the Keras default).
    """

    layers: Sequence[tuple] = MLP_LAYERS
    model_name: str = "mlp"
    num_classes: int = 10
    in_channels: int = 1
    kernel_init: Callable[..., Any] = nn.initializers.xavier_uniform()

    def min_size(self) -> int:
        windows = [(layer[2], 1, 0) if layer[0] == "conv" else (layer[1], layer[1], 0)
                   for layer in self.layers if layer[0] in ("conv", "pool")]
        return min_input_size(windows)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(self.model_name, x, channels=self.in_channels, min_size=self.min_size())
        convs = denses = 0
        pooled = False
        for position, (kind, *args) in enumerate(self.layers):
            if kind == "conv":
                convs += 1
                features, kernel = args
                following = self.layers[position + 1:position + 2]
                # A convolution right before a pool is one layer with its ReLU and the pool
                # (bias, ReLU and pool one CPU kernel each way); same parameters.
                pooled = bool(following) and following[0][0] == "pool"
                if pooled:
                    x = ConvReluMaxPool(features, (kernel, kernel), padding="VALID",
                                        window=following[0][1], kernel_init=self.kernel_init,
                                        name=f"conv{convs}")(x)
                    continue
                x = ConvRelu(features, (kernel, kernel), padding="VALID",
                             kernel_init=self.kernel_init, name=f"conv{convs}")(x)
            elif kind == "pool":
                if not pooled:
                    x = max_pool(x, args[0])
                pooled = False
            elif kind == "dropout":
                x = nn.Dropout(args[0], deterministic=not train)(x)
            elif kind == "dense":
                denses += 1
                x = x.reshape((x.shape[0], -1))
                x = nn.relu(Dense(args[0], kernel_init=self.kernel_init,
                                     name=f"fc{denses}")(x))
            else:
                raise ValueError(f"unknown layer kind {kind!r} in {self.model_name}")
        x = x.reshape((x.shape[0], -1))
        return Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)


MLP = functools.partial(SequentialNet, layers=MLP_LAYERS, model_name="mlp")
MnistCNN = functools.partial(SequentialNet, layers=MNIST_CNN_LAYERS, model_name="mnist_cnn")
KerasCNN = functools.partial(SequentialNet, layers=KERAS_CNN_LAYERS, model_name="keras_cnn")

_LECTURES = "the classic CNN lectures' MNIST case studies"
register("mlp", MLP, paper=f"{_LECTURES}: fully connected baseline 784-500-50-10",
         input_shape=(28, 28, 1), num_params=418_060, num_classes=10,
         reference="fully connected ReLU network, Glorot-uniform init")
register("mnist_cnn", MnistCNN, paper=f"{_LECTURES}: conv 20@5x5, conv 40@5x5, dense 100",
         input_shape=(28, 28, 1), num_params=1_621_670, num_classes=10,
         reference="lecture case study (no padding, no pooling)")
register("keras_cnn", KerasCNN, paper="Keras MNIST CNN example (Chollet, keras-team/keras)",
         input_shape=(28, 28, 1), num_params=600_810, num_classes=10,
         reference="keras-team/keras examples/mnist_cnn.py, 32 maps in both convolutions")
