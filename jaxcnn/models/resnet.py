"""ResNet-18/34/50/101/152 for ImageNet and the paper's plain baselines.

He, Zhang, Ren and Sun, "Deep residual learning for image recognition", CVPR 2016
(arXiv:1512.03385), Table 1; layers, paddings, initialisation and parameter counts follow the
reference implementation, torchvision's ``resnet*`` builders (ResNet v1.5).

Deviation from the paper: ResNet v1.5, the bottleneck's stride sits on its 3x3 convolution
(the paper strides the first 1x1), as in torchvision and the Flax ImageNet example.
Shortcuts are the paper's option B: identity, and a 1x1 convolution with BatchNorm where the
shape changes. ``plain18``/``plain34`` are the paper's plain baselines: the same networks with
no shortcut at all (so without the three projection shortcuts, 173,824 parameters fewer).

Every convolution pads like PyTorch (``kernel // 2`` on each side, also at stride 2), so a
converted torchvision model gives the same logits; see :func:`convert_resnet`. The network
takes any input size (even 1x1: every layer keeps at least one output) and any channel count.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.batch_norm import BatchNorm
from jaxcnn.models.conv import Conv
from jaxcnn.models.dense import Dense
from jaxcnn.models.layers import check_input, torch_batch_norm, torch_max_pool
from jaxcnn.models.registry import register
from jaxcnn.models.torch_convert import TorchWeights, register_converter

# The paper's Table 1: blocks per stage for each depth, and the stages' base widths.
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
               101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_FEATURES = 64  # conv1: 7x7/2, then a 3x3/2 max-pool

# He initialisation (fan_out, as torchvision) for the convolutions; PyTorch's Linear default,
# U(+-1/sqrt(fan_in)), for the classifier.
KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BN_EPSILON = 1e-5

SHORTCUTS = ("projection", "zero_pad", "none")


def conv(features: int, kernel: int, stride: int, kernel_init: Callable[..., Any],
         name: str) -> nn.Conv:
    """A bias-free convolution padded like PyTorch's ``padding=kernel // 2``."""
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=kernel // 2,
                use_bias=False, kernel_init=kernel_init, name=name)


def batch_norm(train: bool, name: str, epsilon: float = BN_EPSILON) -> BatchNorm:
    """BatchNorm with PyTorch's defaults (see :func:`layers.torch_batch_norm`)."""
    return torch_batch_norm(train, name=name, epsilon=epsilon)


def shortcut(x: jax.Array, features: int, stride: int, kind: str, train: bool,
             kernel_init: Callable[..., Any]) -> jax.Array | None:
    """The shortcut of a residual block (call inside the block's compact ``__call__``).

    ``kind`` is the paper's option: "projection" (B: identity, or 1x1 conv + BN where the
    shape changes), "zero_pad" (A: identity, or stride-``stride`` subsampling with the new
    channels zero; no parameters) or "none" (a plain network: returns ``None``).
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {kind!r}; known: {', '.join(SHORTCUTS)}")
    if kind == "none":
        return None
    if stride == 1 and x.shape[-1] == features:
        return x
    if kind == "projection":
        x = conv(features, 1, stride, kernel_init, name="downsample_conv")(x)
        return batch_norm(train, name="downsample_bn")(x)
    x = x[:, ::stride, ::stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm (ResNet-18/34 and the CIFAR ResNets).

    Attributes:
      features: output channels.
      stride: stride of the first convolution (2 where a stage starts).
      shortcut: "projection", "zero_pad" or "none"; see :func:`shortcut`.
      kernel_init: initialiser of the convolution kernels.
    """

    features: int
    stride: int = 1
    shortcut: str = "projection"
    kernel_init: Callable[..., Any] = KAIMING_NORMAL
    expansion: ClassVar[int] = 1
    layers: ClassVar[int] = 2  # weighted layers per block, for the depth in a model's name

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = conv(self.features, 3, self.stride, self.kernel_init, name="conv1")(x)
        y = batch_norm(train, name="bn1")(y, relu=True)
        y = conv(self.features, 3, 1, self.kernel_init, name="conv2")(y)
        return _norm_add_relu(y, x, self, train, name="bn2")


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand to 4x ``features`` (ResNet-50/101/152)."""

    features: int
    stride: int = 1
    shortcut: str = "projection"
    kernel_init: Callable[..., Any] = KAIMING_NORMAL
    expansion: ClassVar[int] = 4
    layers: ClassVar[int] = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = conv(self.features, 1, 1, self.kernel_init, name="conv1")(x)
        y = batch_norm(train, name="bn1")(y, relu=True)
        y = conv(self.features, 3, self.stride, self.kernel_init, name="conv2")(y)
        y = batch_norm(train, name="bn2")(y, relu=True)
        y = conv(self.features * self.expansion, 1, 1, self.kernel_init, name="conv3")(y)
        return _norm_add_relu(y, x, self, train, name="bn3")


def _norm_add_relu(y: jax.Array, x: jax.Array, block: nn.Module, train: bool,
                   name: str) -> jax.Array:
    """A block's tail: ``relu(bn(y) + shortcut(x))``, one call of the BatchNorm ``name`` (one
    kernel each way on the CPU, :class:`~jaxcnn.models.batch_norm.BatchNorm`)."""
    residual = shortcut(x, y.shape[-1], block.stride, block.shortcut, train, block.kernel_init)
    return batch_norm(train, name=name)(y, residual=residual, relu=True)


def residual_stages(x: jax.Array, widths: Sequence[int], sizes: Sequence[int], block: type,
                    shortcut_kind: str, kernel_init: Callable[..., Any],
                    train: bool) -> jax.Array:
    """The stages of blocks, each but the first halving the size (call inside a compact call).

    Blocks are named ``layer{stage}_{index}`` (torchvision's ``layer{stage}.{index}``).
    """
    for stage, (width, size) in enumerate(zip(widths, sizes)):
        for index in range(size):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block(width, stride, shortcut_kind, kernel_init,
                      name=f"layer{stage + 1}_{index}")(x, train)
    return x


def model_name(shortcut_kind: str, block: type, sizes: Sequence[int], stem_layers: int) -> str:
    """"resnet50", "plain18", ...: the depth counts the weighted layers, as the paper does."""
    depth = block.layers * sum(sizes) + stem_layers
    return f"{'plain' if shortcut_kind == 'none' else 'resnet'}{depth}"


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 conv, 3x3/2 max-pool, four stages, global average pool, dense.

    Attributes:
      stage_sizes: blocks per stage (``STAGE_SIZES[depth]``).
      block: :class:`BasicBlock` or :class:`Bottleneck`.
      num_classes: size of the output layer.
      shortcut: "projection" (the paper's option B) or "none" (plain network).
      kernel_init: initialiser of the convolution kernels (He normal, fan_out).
    """

    stage_sizes: Sequence[int]
    block: type = BasicBlock
    num_classes: int = 1000
    shortcut: str = "projection"
    kernel_init: Callable[..., Any] = KAIMING_NORMAL

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        name = model_name(self.shortcut, self.block, self.stage_sizes, stem_layers=2)
        check_input(name, x, channels=None, min_size=1)
        x = conv(STEM_FEATURES, 7, 2, self.kernel_init, name="conv1")(x)
        x = batch_norm(train, name="bn1")(x, relu=True)
        x = torch_max_pool(x, 3, 2, padding=1)
        x = residual_stages(x, STAGE_WIDTHS, self.stage_sizes, self.block, self.shortcut,
                            self.kernel_init, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, kernel_init=TORCH_LINEAR_INIT, name="fc")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[18], block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[34], block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[50], block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[101], block=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[152], block=Bottleneck)
Plain18 = functools.partial(ResNet18, shortcut="none")
Plain34 = functools.partial(ResNet34, shortcut="none")

PAPER = "He, Zhang, Ren and Sun, Deep residual learning for image recognition, CVPR 2016"
# name: (builder, parameters for 1000 classes, torchvision ImageNet top-1 of its V1 weights)
IMAGENET_MODELS = {
    "resnet18": (ResNet18, 11_689_512, 69.758),
    "resnet34": (ResNet34, 21_797_672, 73.314),
    "resnet50": (ResNet50, 25_557_032, 76.13),
    "resnet101": (ResNet101, 44_549_160, 77.374),
    "resnet152": (ResNet152, 60_192_808, 78.312),
    "plain18": (Plain18, 11_515_688, None),
    "plain34": (Plain34, 21_623_848, None),
}
for _name, (_builder, _count, _top1) in IMAGENET_MODELS.items():
    register(
        _name, _builder, paper=PAPER, input_shape=(224, 224, 3), num_params=_count,
        num_classes=1000, top1=_top1,
        reference="torchvision.models." + _name if _name.startswith("resnet")
        else "torchvision.models.resnet" + _name[5:] + " without its shortcuts",
    )


def _convert_resnet(weights: TorchWeights, stage_sizes: Sequence[int], block: type,
                    **model_kwargs: Any) -> dict:
    """torchvision ResNet state dict -> Flax variables of the same ResNet."""
    if model_kwargs.get("shortcut", "projection") != "projection":
        raise ValueError("torchvision ResNets have projection shortcuts; build with the default")
    params: dict = {}
    stats: dict = {}

    def conv_bn(torch_conv: str, torch_bn: str, into: dict, stats_into: dict,
                conv_name: str, bn_name: str) -> None:
        into[conv_name] = weights.conv(torch_conv, bias=False)
        into[bn_name], stats_into[bn_name] = weights.batchnorm(torch_bn)

    conv_bn("conv1", "bn1", params, stats, "conv1", "bn1")
    for stage, size in enumerate(stage_sizes):
        for index in range(size):
            prefix = f"layer{stage + 1}.{index}"
            flax_name = f"layer{stage + 1}_{index}"
            block_params, block_stats = params.setdefault(flax_name, {}), stats.setdefault(flax_name, {})
            for layer in range(1, block.layers + 1):
                conv_bn(f"{prefix}.conv{layer}", f"{prefix}.bn{layer}", block_params, block_stats,
                        f"conv{layer}", f"bn{layer}")
            # Stage 1 of the bottleneck nets widens 64 -> 256, so it projects too.
            if index == 0 and (stage > 0 or block.expansion != 1):
                conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", block_params,
                        block_stats, "downsample_conv", "downsample_bn")
    params["fc"] = weights.dense("fc")
    weights.check_all_used()
    return {"params": params, "batch_stats": stats}


for _name, (_builder, _, _) in IMAGENET_MODELS.items():
    if _name.startswith("resnet"):
        register_converter(_name)(functools.partial(
            _convert_resnet, stage_sizes=_builder.keywords["stage_sizes"],
            block=_builder.keywords["block"]))
