"""oneDNN's convolution, forward and both gradients, as JAX functions on NHWC/HWIO float32.

Each is one XLA FFI call into ``onednn_conv.cc`` (loaded by :mod:`jaxcnn.native.build`);
``jax.vmap`` over them stacks the slices in front (``vmap_method="expand_dims"``), which the
C++ side loops over. ``padding`` is ``((top, bottom), (left, right))``. They are the pieces
``jaxcnn.models.conv`` assembles into a differentiable convolution, with
:func:`few_channel_input_gradient` (jaxcnn's own kernel) in place of oneDNN's input gradient
for layers with few input channels, and :func:`few_tap_kernel_gradient` (also jaxcnn's) for
the kernel gradient of small first layers; call them only where
:func:`jaxcnn.native.native_status` says the library is available.
"""
from __future__ import annotations

import ctypes

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.native.build import native_status


def _call(target: str, a, b, out_shape, strides, padding, *more, vmap_method="expand_dims"):
    out = jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method=vmap_method)(
        a, b, *more, strides=np.asarray(strides, np.int64),
        padding=np.asarray([p for pair in padding for p in pair], np.int64))


def output_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, int, int, int]:
    n, h, w, _ = x_shape
    kh, kw, _, o = kernel_shape
    return (n, (h + sum(padding[0]) - kh) // strides[0] + 1,
            (w + sum(padding[1]) - kw) // strides[1] + 1, o)


def forward(x, w, strides, padding):
    """The convolution of ``x`` (N, H, W, C) with ``w`` (kh, kw, C, O)."""
    return _call("jaxcnn_conv_forward", x, w, output_shape(x.shape, w.shape, strides, padding),
                 strides, padding)


def forward_bias_relu(x, w, bias, strides, padding):
    """``relu(conv(x, w) + bias)`` in one oneDNN call (the bias and ReLU applied as each
    output is written); ``jax.vmap`` maps it one slice at a time."""
    if x.ndim != 4 or w.ndim != 4 or bias.shape != w.shape[-1:]:
        raise ValueError(f"forward_bias_relu takes NHWC x, an HWIO kernel and one bias per "
                         f"output channel; got x {x.shape}, kernel {w.shape}, bias {bias.shape}")
    return _call("jaxcnn_conv_forward_bias_relu", x, w,
                 output_shape(x.shape, w.shape, strides, padding), strides, padding, bias,
                 vmap_method="sequential")


def input_gradient(g, w, x_shape, strides, padding):
    """d(loss)/d(x) from the output gradient ``g`` and the kernel."""
    return _call("jaxcnn_conv_input_gradient", g, w, x_shape, strides, padding)


def kernel_gradient(x, g, kernel_shape, strides, padding):
    """d(loss)/d(w) from the input ``x`` and the output gradient ``g``."""
    return _call("jaxcnn_conv_kernel_gradient", x, g, kernel_shape, strides, padding)


def few_channel_input_gradient(g, w, x_shape, padding):
    """d(loss)/d(x) of a stride-1 convolution by jaxcnn's own kernel
    (``few_channel_input_gradient.cc``: col2im of ``g`` times the kernel), for layers with
    few input channels, from the output gradient ``g``, the kernel and ``x``'s shape."""
    out = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_few_channel_input_gradient", out, vmap_method="sequential")(
        g, w, top=np.int64(padding[0][0]), left=np.int64(padding[1][0]))


def few_tap_kernel_gradient(x, g, kernel_shape, padding):
    """d(loss)/d(w) of a stride-1 convolution with few kernel taps by jaxcnn's own kernel
    (``few_tap_kernel_gradient.cc``), from the input ``x``, the output gradient ``g`` and
    the kernel's shape."""
    out = jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32)
    return jax.ffi.ffi_call("jaxcnn_few_tap_kernel_gradient", out, vmap_method="sequential")(
        x, g, top=np.int64(padding[0][0]), left=np.int64(padding[1][0]))


_PASSES = {"forward": b"f", "input_gradient": b"x", "kernel_gradient": b"w"}


def implementation(pass_name: str, x_shape, kernel_shape, strides, padding) -> str:
    """The oneDNN implementation that runs ``pass_name`` (``"forward"``, ``"input_gradient"``
    or ``"kernel_gradient"``) of this convolution, as oneDNN names it (``"jit:avx512_core"``,
    ``"brgconv:avx512_core"``, ...): which kernel a layer gets on this machine, including
    ``onednn_conv.cc``'s own choice for input gradients. ``padding`` as in :func:`forward`."""
    if pass_name not in _PASSES:
        raise ValueError(f"pass_name must be one of {sorted(_PASSES)}, not {pass_name!r}")
    status = native_status()
    if not status.available:
        raise RuntimeError(f"jaxcnn's oneDNN library is not available: {status.reason}")
    n, h, w, c = x_shape
    kh, kw, _, o = kernel_shape
    _, oh, ow, _ = output_shape(x_shape, kernel_shape, strides, padding)
    sizes = (ctypes.c_int64 * 15)(n, h, w, c, kh, kw, o, oh, ow, *strides,
                                  *(p for pair in padding for p in pair))
    name = ctypes.create_string_buffer(512)
    query = ctypes.CDLL(str(status.library)).jaxcnn_conv_implementation
    if query(ctypes.c_char(_PASSES[pass_name]), sizes, name, len(name)) != 0:
        raise ValueError(f"oneDNN has no {pass_name} for x {tuple(x_shape)}, kernel "
                         f"{tuple(kernel_shape)}, strides {strides}, padding {padding}: "
                         f"{name.value.decode()}")
    return name.value.decode()
