"""oneDNN's batch normalization in training, forward and backward, as JAX functions on NHWC
float32 activations with per-channel float32 vectors; and jaxcnn's own kernel for batch
normalization followed by (residual +) ReLU (:func:`relu_forward`, :func:`relu_backward`,
``batch_norm_relu.cc``), which ``jax.vmap`` maps one slice at a time.

Each is one XLA FFI call (the library is loaded by :mod:`jaxcnn.native.build`); over oneDNN's
(``onednn_batch_norm.cc``) ``jax.vmap`` stacks slices in front (``vmap_method="expand_dims"``),
each normalized alone.
``jaxcnn.models.batch_norm`` makes them a differentiable layer; call them only where
:func:`jaxcnn.native.native_status` says the library is available.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check(x, *vectors):
    if x.ndim != 4 or any(v.shape != x.shape[-1:] for v in vectors):
        raise ValueError(f"batch normalization takes NHWC activations and one value per "
                         f"channel; got {x.shape} with {[v.shape for v in vectors]}")


def forward(x, scale, shift, epsilon: float):
    """``(y, mean, variance)``: ``x`` (N, H, W, C) normalized by its batch statistics over
    N, H and W, times ``scale`` plus ``shift``; the statistics per channel, the variance
    biased (divided by N*H*W)."""
    _check(x, scale, shift)
    channels = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels, channels)
    return jax.ffi.ffi_call("jaxcnn_batch_norm_forward", out, vmap_method="expand_dims")(
        x, scale, shift, epsilon=np.float32(epsilon))


def backward(x, dy, mean, variance, scale, epsilon: float):
    """``(dx, dscale, dshift)`` of :func:`forward` from its output gradient ``dy``: the input
    gradient includes the paths through the batch mean and variance."""
    _check(x, mean, variance, scale)
    channels = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels, channels)
    return jax.ffi.ffi_call("jaxcnn_batch_norm_backward", out, vmap_method="expand_dims")(
        x, dy, mean, variance, scale, epsilon=np.float32(epsilon))


def relu_forward(x, scale, shift, epsilon: float, residual=None):
    """``(y, mean, variance)`` with ``y = relu(bn(x) + residual)`` (jaxcnn's own kernel,
    ``batch_norm_relu.cc``): :func:`forward`'s normalization, then the residual (``None``:
    none) added and ReLU applied in the same pass."""
    _check(x, scale, shift)
    if residual is not None and (residual.shape != x.shape or residual.dtype != jnp.float32):
        raise ValueError(f"the residual must be float32 of the activations' shape {x.shape}; "
                         f"got {residual.dtype} {residual.shape}")
    channels = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), channels, channels)
    target, args = ("jaxcnn_batch_norm_relu_forward", (x, scale, shift)) if residual is None \
        else ("jaxcnn_batch_norm_add_relu_forward", (x, scale, shift, residual))
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        *args, epsilon=np.float32(epsilon))


def relu_backward(x, y, dy, mean, variance, scale, shift, epsilon: float, residual: bool):
    """The gradients of :func:`relu_forward` from its output ``y`` and the output's gradient
    ``dy``: ``(dx, dscale, dshift)``, and the residual's (``dy`` where ``y > 0``) last when
    ``residual``. Without a residual, the kernel recomputes where ``y > 0`` from ``x`` and
    ``shift`` (bit for bit as the forward pass did), reading one array less; ``y`` is then
    not passed to it."""
    _check(x, mean, variance, scale, shift)
    channels = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
    activation = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    out = (activation, channels, channels) + ((activation,) if residual else ())
    target, args = ("jaxcnn_batch_norm_add_relu_backward", (x, y, dy, mean, variance, scale)) \
        if residual else ("jaxcnn_batch_norm_relu_backward", (x, dy, mean, variance, scale, shift))
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        *args, epsilon=np.float32(epsilon))
