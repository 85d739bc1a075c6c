"""The small CNN of the lectures' homework, with the switches the experiments turn.

The model zoo's networks are fixed architectures; the homework asks what happens to one small
network with and without BatchNorm (Ioffe and Szegedy, "Batch normalization: accelerating deep
network training by reducing internal covariate shift", ICML 2015), with and without dropout
(Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov, "Dropout: a simple way to prevent
neural networks from overfitting", JMLR 2014), and under several initialisations (Glorot and
Bengio 2010; He et al. 2015). ``lecture_cnn`` is that network: ``3x3`` "same" convolutions,
each followed by [BatchNorm], the activation and a 2x2 max pool; then [dropout], hidden dense
layers each followed by [BatchNorm], the activation and [dropout]; then the output layer.

Importing this module registers ``lecture_cnn`` in the jaxcnn model registry (the experiment
runner does), so runs of it train, resume and evaluate like any registered model in a process
that imported ``experiments.nets``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from jaxcnn.models.layers import check_input
from jaxcnn.models.registry import _REGISTRY, register

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "sigmoid": nn.sigmoid}


class LectureCNN(nn.Module):
    """Conv-[BN]-act-pool stages, then dense-[BN]-act-[dropout] layers, then the classifier.

    Attributes:
      num_classes: size of the output layer (``head``).
      convs: output channels of each 3x3 convolution (each followed by a 2x2 max pool).
      dense: widths of the hidden dense layers.
      activation: ``relu``, ``tanh`` or ``sigmoid``.
      batch_norm: BatchNorm after every convolution and hidden dense layer (before the
        activation, as Ioffe and Szegedy place it).
      dropout: drop rate before every dense layer (0: none).
      kernel_init: initialiser of every kernel (Glorot uniform, the Keras default).
    """

    num_classes: int = 10
    convs: Sequence[int] = (32, 64)
    dense: Sequence[int] = (128,)
    activation: str = "relu"
    batch_norm: bool = False
    dropout: float = 0.0
    kernel_init: Callable[..., Any] = nn.initializers.glorot_uniform()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input("lecture_cnn", x, channels=None, min_size=2 ** len(self.convs))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"lecture_cnn: unknown activation {self.activation!r}; "
                             f"known: {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[self.activation]

        def norm(y, name):
            if not self.batch_norm:
                return y
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(y)

        for index, features in enumerate(self.convs):
            name = f"conv{index + 1}"
            x = nn.Conv(features, (3, 3), padding="SAME", use_bias=not self.batch_norm,
                        kernel_init=self.kernel_init, name=name)(x)
            x = nn.max_pool(act(norm(x, f"bn_{name}")), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for index, width in enumerate(self.dense):
            name = f"fc{index + 1}"
            x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(x)
            x = nn.Dense(width, use_bias=not self.batch_norm, kernel_init=self.kernel_init,
                         name=name)(x)
            x = act(norm(x, f"bn_{name}"))
        x = nn.Dropout(self.dropout, deterministic=not train or not self.dropout)(x)
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init, name="head")(x)


if "lecture_cnn" not in _REGISTRY:
    register("lecture_cnn", LectureCNN,
             paper="the classic CNN lectures' homework network (BatchNorm: Ioffe and Szegedy "
                   "2015; dropout: Srivastava et al. 2014)",
             input_shape=(28, 28, 1), num_params=None, num_classes=10,
             reference="experiments/nets.py")
