"""GoogLeNet (Inception v1): torchvision's ``googlenet`` and the paper's ``inception_v1``.

Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke and Rabinovich, "Going deeper
with convolutions", CVPR 2015 (arXiv:1409.4842), Table 1. Reference implementation:
torchvision's ``googlenet`` (``torchvision.models.googlenet``).

``googlenet`` is the network as torchvision builds it, so converted torchvision weights give
the same logits (:func:`convert_googlenet`): every convolution is followed by BatchNorm (eps
1e-3) and ReLU, the "5x5" branch uses a 3x3 convolution (torchvision issue #906), the pool
before inception (5a) is 2x2/2, max-pools round up (``ceil_mode``), dropout 0.2 before the
classifier, and the auxiliary heads average-pool adaptively to 4x4.

``inception_v1`` follows the paper's table: true 5x5 branches, a 3x3/2 pool before (5a),
dropout 0.4, auxiliary heads with the paper's 5x5/3 average pool; on 224x224 its blocks give
the table's sizes 28x28x256 (3a), 28x28x480 (3b), 14x14x512 (4a-4c), 14x14x528 (4d),
14x14x832 (4e), 7x7x832 (5a), 7x7x1024 (5b). Deviation from the paper: BatchNorm after every
convolution (as ``googlenet``) in place of the two local response normalisations.

``aux_logits=True`` adds the two auxiliary classifiers (after 4a and 4d), used in training
only: in train mode the model then returns ``GoogLeNetOutputs(logits, aux1, aux2)`` (a named
tuple; torchvision orders them ``(logits, aux2, aux1)``), in eval mode just the logits.
Weights are initialised as torchvision does, N(0, 0.01) truncated at +-2 (absolute, so
+-200 standard deviations: a plain normal); dense biases start at zero. Max-pool padding is
PyTorch's: see :func:`jaxcnn.models.layers.torch_max_pool`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import JaxCNNError
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import (
    adaptive_avg_pool, check_input, torch_max_pool, torch_pool_output_size,
)
from jaxcnn.models.registry import register
from jaxcnn.models.resnet import batch_norm, conv
from jaxcnn.models.torch_convert import TorchWeights, register_converter

# Table 1 of the paper, in order. conv: (features, kernel, stride), padded by kernel // 2.
# pool: (window, stride), ceil mode; window None is the model's ``pool4_window``.
# inception: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
LAYERS = (
    ("conv1", "conv", (64, 7, 2)),
    ("maxpool1", "pool", (3, 2)),
    ("conv2", "conv", (64, 1, 1)),
    ("conv3", "conv", (192, 3, 1)),
    ("maxpool2", "pool", (3, 2)),
    ("inception3a", "inception", (64, 96, 128, 16, 32, 32)),
    ("inception3b", "inception", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", "pool", (3, 2)),
    ("inception4a", "inception", (192, 96, 208, 16, 48, 64)),
    ("inception4b", "inception", (160, 112, 224, 24, 64, 64)),
    ("inception4c", "inception", (128, 128, 256, 24, 64, 64)),
    ("inception4d", "inception", (112, 144, 288, 32, 64, 64)),
    ("inception4e", "inception", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", "pool", (None, 2)),
    ("inception5a", "inception", (256, 160, 320, 32, 128, 128)),
    ("inception5b", "inception", (384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}
AUX_FEATURES, AUX_HIDDEN, AUX_GRID = 128, 1024, 4  # 1x1 conv, fc1 width, pooled map size
PAPER_AUX_POOL = (5, 3)  # the paper's aux average pool: 5x5, stride 3 (14x14 -> 4x4)
BN_EPSILON = 1e-3
# torchvision's ``transform_input``: ImageNet-normalised input -> the (x - 0.5) / 0.5 scale
# that the original (ported) GoogLeNet weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNC_NORMAL = nn.initializers.normal(0.01)  # torchvision: trunc_normal_(0, 0.01, a=-2, b=2)


class GoogLeNetOutputs(NamedTuple):
    """What a GoogLeNet with auxiliary heads returns in train mode."""

    logits: jax.Array
    aux1: jax.Array
    aux2: jax.Array


class ConvBN(nn.Module):
    """Convolution (no bias), BatchNorm, ReLU: torchvision's ``BasicConv2d``."""

    features: int
    kernel: int
    stride: int = 1
    epsilon: float = BN_EPSILON
    kernel_init: Callable[..., Any] = TRUNC_NORMAL

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(self.features, self.kernel, self.stride, self.kernel_init, name="conv")(x)
        return batch_norm(train, name="bn", epsilon=self.epsilon)(x, relu=True)


class Inception(nn.Module):
    """The Inception block: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3/1 max-pool -> 1x1, concatenated.

    Attributes:
      ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj: the filter counts of Table 1.
      branch5_kernel: kernel of the "5x5" branch: 5 in the paper, 3 in torchvision.
    """

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    branch5_kernel: int = 5
    kernel_init: Callable[..., Any] = TRUNC_NORMAL

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layer = functools.partial(ConvBN, kernel_init=self.kernel_init)
        branch1 = layer(self.ch1x1, 1, name="branch1")(x, train)
        branch2 = layer(self.ch3x3red, 1, name="branch2_0")(x, train)
        branch2 = layer(self.ch3x3, 3, name="branch2_1")(branch2, train)
        branch3 = layer(self.ch5x5red, 1, name="branch3_0")(x, train)
        branch3 = layer(self.ch5x5, self.branch5_kernel, name="branch3_1")(branch3, train)
        branch4 = torch_max_pool(x, 3, 1, padding=1, ceil_mode=True)
        branch4 = layer(self.pool_proj, 1, name="branch4_1")(branch4, train)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: average pool to 4x4, 1x1 conv 128, fc 1024, dropout, fc.

    Attributes:
      pool: "adaptive" (torchvision: adaptive average pool to 4x4) or "paper" (5x5/3 average
        pool, which gives 4x4 on the 14x14 maps of a 224x224 input).
    """

    num_classes: int
    dropout_rate: float = 0.7
    pool: str = "adaptive"
    kernel_init: Callable[..., Any] = TRUNC_NORMAL

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.pool == "adaptive":
            x = adaptive_avg_pool(x, AUX_GRID)
        else:
            window, stride = PAPER_AUX_POOL
            x = nn.avg_pool(x, (window, window), strides=(stride, stride))
        x = ConvBN(AUX_FEATURES, 1, kernel_init=self.kernel_init, name="conv")(x, train)
        x = x.reshape((x.shape[0], -1))  # (h, w, c) order; the converter permutes torch's (c, h, w)
        x = nn.relu(Dense(AUX_HIDDEN, kernel_init=self.kernel_init, name="fc1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return Dense(self.num_classes, kernel_init=self.kernel_init, name="fc2")(x)


class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 (see the module docstring for the two variants).

    Attributes:
      num_classes: size of the output layers.
      aux_logits: add the two auxiliary classifiers (returned in train mode only).
      transform_input: rescale ImageNet-normalised input as torchvision's ``transform_input``
        (set it with torchvision's pretrained GoogLeNet weights, which expect it).
      branch5_kernel: kernel of the Inception blocks' "5x5" branch (3 in torchvision).
      pool4_window: window of the ceil-mode max-pool before (5a) (2 in torchvision, 3 paper).
      dropout_rate: dropout before the classifier (0.2 torchvision, 0.4 paper).
      aux_dropout_rate: dropout in the auxiliary classifiers (0.7).
      aux_pool: the auxiliary classifiers' pooling, "adaptive" or "paper" (InceptionAux).
      kernel_init: initialiser of every convolution and dense kernel.
      model_name: the registry name, for error messages.
    """

    num_classes: int = 1000
    aux_logits: bool = False
    transform_input: bool = False
    branch5_kernel: int = 3
    pool4_window: int = 2
    dropout_rate: float = 0.2
    aux_dropout_rate: float = 0.7
    aux_pool: str = "adaptive"
    kernel_init: Callable[..., Any] = TRUNC_NORMAL
    model_name: str = "googlenet"

    def fits(self, size: int) -> bool:
        """Whether every layer has an output on ``size`` x ``size`` input."""
        for name, kind, spec in LAYERS:
            if kind == "conv":
                size = torch_pool_output_size(size, spec[1], spec[2], spec[1] // 2)
            elif kind == "pool":
                size = torch_pool_output_size(size, spec[0] or self.pool4_window, spec[1],
                                              ceil_mode=True)
            if self.aux_logits and name in AUX_AFTER and self.aux_pool == "paper":
                size_aux = torch_pool_output_size(size, *PAPER_AUX_POOL)
                if size_aux < 1:
                    return False
            if size < 1:
                return False
        return True

    def min_input_size(self) -> int:
        """The smallest input height and width the network takes (15 for googlenet)."""
        return next(size for size in range(1, 1024) if self.fits(size))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        check_input(self.model_name, x, channels=3 if self.transform_input else None,
                    min_size=self.min_input_size())
        if self.transform_input:
            std, mean = np.asarray(IMAGENET_STD), np.asarray(IMAGENET_MEAN)
            x = x * (std / 0.5) + (mean - 0.5) / 0.5
        aux = {}
        for name, kind, spec in LAYERS:
            if kind == "conv":
                x = ConvBN(*spec, kernel_init=self.kernel_init, name=name)(x, train)
            elif kind == "pool":
                x = torch_max_pool(x, spec[0] or self.pool4_window, spec[1], ceil_mode=True)
            else:
                x = Inception(*spec, branch5_kernel=self.branch5_kernel,
                              kernel_init=self.kernel_init, name=name)(x, train)
            # The auxiliary heads run in training only, and at init so that they get weights.
            if name in AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
                aux[AUX_AFTER[name]] = InceptionAux(
                    self.num_classes, self.aux_dropout_rate, self.aux_pool, self.kernel_init,
                    name=AUX_AFTER[name])(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = Dense(self.num_classes, kernel_init=self.kernel_init, name="fc")(x)
        if self.aux_logits and train:
            return GoogLeNetOutputs(logits, aux["aux1"], aux["aux2"])
        return logits


InceptionV1 = functools.partial(
    GoogLeNet, branch5_kernel=5, pool4_window=3, dropout_rate=0.4, aux_pool="paper",
    model_name="inception_v1")

PAPER = "Szegedy et al., Going deeper with convolutions, CVPR 2015"
register("googlenet", GoogLeNet, paper=PAPER, input_shape=(224, 224, 3),
         num_params=6_624_904, num_classes=1000, top1=69.778,
         reference="torchvision.models.googlenet")
register("inception_v1", InceptionV1, paper=PAPER, input_shape=(224, 224, 3),
         num_params=7_005_832, num_classes=1000,
         reference="the paper's Table 1 (5x5 branches), BatchNorm as torchvision's googlenet")

_AUX_KEYS = ("conv.conv.weight", "conv.bn.weight", "conv.bn.bias", "conv.bn.running_mean",
             "conv.bn.running_var", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


@register_converter("googlenet")
def convert_googlenet(weights: TorchWeights, aux_logits: bool = False,
                      **model_kwargs: Any) -> dict:
    """torchvision GoogLeNet state dict -> Flax variables of ``googlenet``.

    With ``aux_logits=False`` the state dict's auxiliary heads, if it has them, are dropped.
    """
    params: dict = {}
    stats: dict = {}

    def conv_bn(torch_prefix: str) -> tuple[dict, dict]:
        bn_params, bn_stats = weights.batchnorm(f"{torch_prefix}.bn")
        return ({"conv": weights.conv(f"{torch_prefix}.conv", bias=False), "bn": bn_params},
                {"bn": bn_stats})

    for name, kind, _ in LAYERS:
        if kind == "conv":
            params[name], stats[name] = conv_bn(name)
        elif kind == "inception":
            params[name], stats[name] = {}, {}
            for branch in ("branch1", "branch2_0", "branch2_1", "branch3_0", "branch3_1",
                           "branch4_1"):
                torch_prefix = f"{name}.{branch.replace('_', '.')}"
                params[name][branch], stats[name][branch] = conv_bn(torch_prefix)
    for head in AUX_AFTER.values():
        if aux_logits:
            params[head], stats[head] = {}, {}
            params[head]["conv"], stats[head]["conv"] = conv_bn(f"{head}.conv")
            fc1 = weights.raw(f"{head}.fc1.weight")  # (out, c*h*w) -> (h*w*c, out)
            fc1 = fc1.reshape(fc1.shape[0], AUX_FEATURES, AUX_GRID, AUX_GRID)
            params[head]["fc1"] = {"kernel": fc1.transpose(2, 3, 1, 0).reshape(-1, fc1.shape[0]),
                                   "bias": weights.raw(f"{head}.fc1.bias")}
            params[head]["fc2"] = weights.dense(f"{head}.fc2")
        else:
            for key in _AUX_KEYS:
                try:
                    weights.raw(f"{head}.{key}")  # marks it used: dropped on purpose
                except JaxCNNError:
                    pass  # a state dict built with aux_logits=False has no aux heads
    params["fc"] = weights.dense("fc")
    weights.check_all_used()
    return {"params": params, "batch_stats": stats}
