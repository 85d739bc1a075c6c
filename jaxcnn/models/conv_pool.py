"""A convolution followed by ReLU and a non-overlapping max pool, as one layer.

The conv -> ReLU -> max-pool stage of LeNet-5 (LeCun et al. 1998, in its modern form), VGG
(Simonyan and Zisserman 2015) and the Keras MNIST CNN. :class:`ConvReluMaxPool` is the zoo's
:data:`jaxcnn.models.conv.Conv` with the same parameters (``kernel``, then ``bias``, in its own
scope, so checkpoints and converted weights are unaffected), followed by
``max_pool(relu(y), window)``.

On the CPU with jaxcnn's native library, the bias, ReLU and pool after a float32 convolution
large enough for oneDNN (:data:`jaxcnn.models.conv.MIN_ONEDNN_MACS`) run as one kernel each
way (:mod:`jaxcnn.native.pool`) instead of XLA:CPU's five loop fusions and a bias reduction:
LeNet-5's first stage at batch 128, forward and backward, about 1.2 -> 0.6-0.9 ms
(``benchmarks/conv_pool.py``); whole LeNet-5 train steps 1.02-1.12x faster (alternating in
one process). The values and z's gradient are XLA's bit for bit; the bias gradient is summed
in another order (relative differences of about 1e-7).

Where the kernel runs, the convolution inside the layer is a child ``Conv`` without bias that
shares the layer's scope, so Flax's ``capture_intermediates`` sees its output without the
bias; elsewhere (and within :func:`jaxcnn.models.conv.plain_lax_layers`, as
``jaxcnn.viz`` traces) the layer calls ``Conv``'s own ``__call__``, whose output includes it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.models.conv import MIN_ONEDNN_MACS, conv_general_dilated, onednn_allowed
from jaxcnn.models.layers import max_pool
from jaxcnn.native import pool as native_pool


def bias_relu_max_pool_xla(z: jax.Array, bias: jax.Array, window: int) -> jax.Array:
    """``max_pool(relu(z + bias), window)`` in XLA (other platforms and dtypes)."""
    return max_pool(nn.relu(z + bias), window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bias_relu_max_pool_native(z, bias, window):
    return native_pool.forward(z, bias, window)


def _native_forward(z, bias, window):
    return native_pool.forward(z, bias, window), (z, bias)


def _native_backward(window, residuals, dy):
    z, bias = residuals
    return native_pool.backward(z, bias, dy, window)


_bias_relu_max_pool_native.defvjp(_native_forward, _native_backward)


def bias_relu_max_pool(z: jax.Array, bias: jax.Array, window: int) -> jax.Array:
    """``max_pool(relu(z + bias), window)`` of NHWC ``z`` (``bias`` one value per channel):
    jaxcnn's native kernel on the CPU for float32, XLA's expression otherwise."""
    if z.ndim != 4:
        return bias_relu_max_pool_xla(z, bias, window)  # max_pool names the problem
    h, w = z.shape[1:3]
    if h // window < 1 or w // window < 1:
        raise ValueError(f"a {window}x{window} pool has no output on a {h}x{w} input")
    if z.dtype != jnp.float32 or bias.dtype != jnp.float32 or not onednn_allowed():
        return bias_relu_max_pool_xla(z, bias, window)
    return lax.platform_dependent(
        z, bias,
        cpu=lambda z, b: _bias_relu_max_pool_native(z, b, window),
        default=lambda z, b: bias_relu_max_pool_xla(z, b, window))


class ConvReluMaxPool(nn.Conv):
    """:data:`jaxcnn.models.conv.Conv` (all of ``flax.linen.Conv``'s attributes), then ReLU,
    then a ``window`` x ``window`` max pool with stride ``window``
    (:func:`jaxcnn.models.layers.max_pool`).

    Takes NHWC batches. Parameters: ``kernel`` and ``bias`` exactly as ``Conv``'s.
    """
    conv_general_dilated: Any = conv_general_dilated
    window: int = 2

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not self.use_bias or not onednn_allowed():  # Conv's own code, then XLA's
            return max_pool(nn.relu(super().__call__(inputs)), self.window)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(nn.Conv)
                  if f.init and f.name not in ("parent", "name")}
        # The convolution without its bias, in this module's scope (its kernel is ours).
        conv = nn.Conv(**{**fields, "use_bias": False})
        nn.share_scope(self, conv)
        z = conv(inputs)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if self.dtype is not None:
            bias = bias.astype(self.dtype)
        taps = math.prod(np.atleast_1d(self.kernel_size)) * inputs.shape[-1]
        macs = z.size * taps // self.feature_group_count
        if z.dtype != bias.dtype or macs < MIN_ONEDNN_MACS:
            # Where the convolution is too small for oneDNN, XLA runs it and the layers around
            # it on several threads at once, and the kernel's lock and OpenMP team cost more
            # than they save (LeNet-5 at batch 24: 0.93-0.97x in whole steps).
            return bias_relu_max_pool_xla(z, bias, self.window)
        return bias_relu_max_pool(z, bias, self.window)
