"""A convolution's bias, ReLU and non-overlapping max pool as one CPU kernel each way.

:func:`forward` is ``max_pool(relu(z + bias), window)`` and :func:`backward` its gradient with
respect to ``z`` and ``bias``, each one XLA FFI call into ``bias_relu_max_pool.cc`` (loaded by
:mod:`jaxcnn.native.build`) on NHWC float32 ``z``. ``jax.vmap`` maps them one slice at a
time. ``jaxcnn.models.conv_pool`` makes them a differentiable layer; call them only where
:func:`jaxcnn.native.native_status` says the library is available.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check(z, bias, window: int):
    if z.ndim != 4 or bias.shape != z.shape[-1:] or window < 1 or \
            z.shape[1] < window or z.shape[2] < window:
        raise ValueError(f"bias_relu_max_pool takes NHWC z, one bias per channel and a window "
                         f"no larger than the map; got z {z.shape}, bias {bias.shape}, "
                         f"window {window}")


def forward(z, bias, window: int):
    """``max_pool(relu(z + bias))`` over ``window`` x ``window`` tiles with stride ``window``
    (a trailing remainder dropped)."""
    _check(z, bias, window)
    n, h, w, c = z.shape
    out = jax.ShapeDtypeStruct((n, h // window, w // window, c), jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_bias_relu_max_pool_forward", out, vmap_method="sequential")(
        z, bias, window=np.int64(window))


def backward(z, bias, dy, window: int):
    """``(dz, dbias)`` of :func:`forward` from its output gradient ``dy``: each tile's gradient
    shared equally by the elements at its maximum, none where the maximum plus bias is not
    above 0; ``dbias`` is ``dz`` summed per channel."""
    _check(z, bias, window)
    out = (jax.ShapeDtypeStruct(z.shape, jnp.float32),
           jax.ShapeDtypeStruct(bias.shape, jnp.float32))
    return jax.ffi.ffi_call("jaxcnn_bias_relu_max_pool_backward", out, vmap_method="sequential")(
        z, bias, dy, window=np.int64(window))
