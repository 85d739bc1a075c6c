"""A convolution followed by ReLU, as one layer whose bias and ReLU ride in the convolution.

The conv -> ReLU unit of the networks before BatchNorm: the lectures' MNIST CNN, AlexNet
(Krizhevsky et al. 2012), VGG (Simonyan and Zisserman 2015) where no pool follows.
:class:`ConvRelu` is the zoo's :data:`jaxcnn.models.conv.Conv` with the same parameters
(``kernel``, then ``bias``, so checkpoints and converted weights are unaffected), followed by
``relu``.

On the CPU with jaxcnn's native library, where the convolution is routed to oneDNN
(:func:`jaxcnn.models.conv.routes_to_onednn`), the forward pass is one oneDNN call that adds
the bias and applies the ReLU as it writes each output (a post-op), instead of XLA:CPU
reading and writing the whole feature map once more; the backward pass masks the output
gradient where the output is not above 0 (ReLU's gradient at 0 is 0, as ``jax.nn.relu``'s)
and runs the convolution's usual gradients. Values equal ``relu(conv(x, w) + b)`` computed
by XLA up to float32 summation order. Elsewhere the layer is ``Conv`` then ``nn.relu``.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.models.conv import NHWC, conv_general_dilated, onednn_gradients, routes_to_onednn
from jaxcnn.native import conv as onednn


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_bias_relu_onednn(x, w, bias, strides, padding):
    return onednn.forward_bias_relu(x, w, bias, strides, padding)


def _forward(x, w, bias, strides, padding):
    y = onednn.forward_bias_relu(x, w, bias, strides, padding)
    return y, (x, w, y)


def _backward(strides, padding, residuals, dy):
    x, w, y = residuals
    g = jnp.where(y > 0, dy, 0.0)
    dx, dw = onednn_gradients(x, w, g, strides, padding)
    return dx, dw, g.sum(axis=(0, 1, 2))


_conv_bias_relu_onednn.defvjp(_forward, _backward)


def _conv_bias_relu_xla(x, w, bias, strides, padding):
    z = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    return nn.relu(z + bias)


def _pairs(value, name: str) -> tuple[int, int]:
    if value is None:
        return (1, 1)
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"ConvRelu takes 2-D {name}, got {value!r}")
    return tuple(int(v) for v in value)


class ConvRelu(nn.Conv):
    """:data:`jaxcnn.models.conv.Conv` (all of ``flax.linen.Conv``'s attributes), then ReLU.

    Takes NHWC batches. Parameters: ``kernel`` and ``bias`` exactly as ``Conv``'s.
    """
    conv_general_dilated: Any = conv_general_dilated

    def _fused_geometry(self, inputs: jax.Array):
        """``(kernel_size, strides, padding pairs)`` of the fused oneDNN path, or None where
        the layer takes Conv's own code (options that path does not cover, or a convolution
        not routed to oneDNN)."""
        plain = (self.use_bias and inputs.ndim == 4 and inputs.dtype == jnp.float32
                 and self.dtype in (None, jnp.float32) and self.param_dtype == jnp.float32
                 and self.feature_group_count == 1 and self.mask is None
                 and self.precision is None
                 and _pairs(self.input_dilation, "input_dilation") == (1, 1)
                 and _pairs(self.kernel_dilation, "kernel_dilation") == (1, 1))
        padding = self.padding
        if isinstance(padding, int):
            padding = ((padding, padding),) * 2
        if isinstance(padding, str):
            plain = plain and padding in ("SAME", "VALID")
        elif len(padding) != 2 or \
                not all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in padding):
            plain = False
        if not plain:
            return None
        kernel_size = _pairs(self.kernel_size, "kernel_size")
        strides = _pairs(self.strides, "strides")
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(inputs.shape[1:3], kernel_size, strides, padding)
        padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        kernel = jax.ShapeDtypeStruct((*kernel_size, inputs.shape[-1], self.features),
                                      jnp.float32)
        if not routes_to_onednn(inputs, kernel, strides, padding):
            return None
        return kernel_size, strides, padding

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        geometry = self._fused_geometry(inputs)
        if geometry is None:
            return nn.relu(super().__call__(inputs))
        kernel_size, strides, padding = geometry
        kernel = self.param("kernel", self.kernel_init,
                            (*kernel_size, inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return lax.platform_dependent(
            inputs, kernel, bias,
            cpu=lambda x, w, b: _conv_bias_relu_onednn(x, w, b, strides, padding),
            default=lambda x, w, b: _conv_bias_relu_xla(x, w, b, strides, padding))
