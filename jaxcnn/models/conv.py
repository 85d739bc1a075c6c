"""The zoo's convolution: XLA's own, with a faster kernel gradient on the CPU.

XLA:CPU runs a convolution's forward pass and its input gradient close to the machine's
matmul rate, but its kernel (weight) gradient, which XLA computes as one more convolution
whose "filter" is the output gradient, as large as the image, runs several times slower: on
these 2 cores, for the lecture MNIST CNN's second layer (26x26x32 -> 24x24x64, batch 128),
about 2-4x the time of the forward pass and input gradient together.

On the CPU, :func:`conv_general_dilated` therefore computes the kernel gradient the way
Caffe and early cuDNN did (im2col, Chellapilla, Puri and Simard 2006): for each image its
patch matrix (kh*kw*C rows, one column per output pixel) times its output gradient, summed
over the batch by a ``lax.scan`` so that one image's patches stay in cache. The input
gradient stays XLA's, and so does the forward pass, except for first layers with at most
32 kernel taps (kh*kw*C_in), where XLA:CPU is slowest (5x5x1: 10 ms for a batch of 128 on
one core) and a fused sum of shifted slices is about 4-10x faster (:func:`shift_and_add`). On other platforms (and for grouped, dilated or
non-float32 convolutions) nothing changes: ``lax.conv_general_dilated`` runs.

:data:`Conv` is ``flax.linen.Conv`` with this function plugged in: same parameters, names
and shapes, so checkpoints and converted torchvision weights are unaffected. The results
equal XLA's up to float32 summation order (relative differences of about 1e-6).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
# The largest patch matrix of one image (elements) that still gains from im2col; above it
# (e.g. 224x224 feature maps) XLA's own convolution is kept.
MAX_PATCH_ELEMENTS = 2 ** 21
# Up to this many kernel taps (kh*kw*C_in), the CPU forward pass is :func:`shift_and_add`.
MAX_SHIFTED_TERMS = 32


_XLA_ONLY = contextvars.ContextVar("jaxcnn_plain_lax_layers", default=False)


@contextlib.contextmanager
def plain_lax_layers() -> Iterator[None]:
    """Within it, models trace one ``lax.conv_general_dilated`` per convolution (no CPU/GPU
    switch) and ``reduce_window`` per max pool (``jaxcnn.models.layers.max_pool``): for tools
    that read a model's jaxpr (``jaxcnn.ops.receptive_field``), or to compare speeds."""
    token = _XLA_ONLY.set(True)
    try:
        yield
    finally:
        _XLA_ONLY.reset(token)


def plain_lax_active() -> bool:
    return _XLA_ONLY.get()


def _plain(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def shift_and_add(x, w, strides, padding):
    """The convolution as a sum of kh*kw*C shifted input slices, each scaled by a kernel row:
    one fused elementwise loop, several times faster than XLA:CPU's convolution for first
    layers with few input channels (LeNet-5's 5x5x1, a CIFAR ResNet's 3x3x3)."""
    kh, kw, c, _ = w.shape
    (sh, sw) = strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    terms = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, k:k + 1] * w[i, j, k]
             for i in range(kh) for j in range(kw) for k in range(c)]
    return functools.reduce(jnp.add, terms)


def _cpu_forward(x, w, strides, padding):
    kh, kw, c, _ = w.shape
    if kh * kw * c <= MAX_SHIFTED_TERMS:
        return shift_and_add(x, w, strides, padding)
    return _plain(x, w, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_im2col_grad(x, w, strides, padding):
    return _cpu_forward(x, w, strides, padding)


def _forward(x, w, strides, padding):
    return _cpu_forward(x, w, strides, padding), (x, w)


def kernel_gradient(x, g, kernel_shape, strides, padding):
    """d(loss)/d(kernel) of an NHWC/HWIO convolution from its input ``x`` and output gradient
    ``g``: the sum over images of patches(image)^T @ g(image), as a scan over the batch."""
    kh, kw, c, o = kernel_shape
    (sh, sw), (oh, ow) = strides, g.shape[1:3]
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))

    def add_image(total, pair):
        image, grad = pair
        channels_first = jnp.transpose(image, (2, 0, 1))
        patches = jnp.stack([channels_first[:, i:i + sh * (oh - 1) + 1:sh,
                                            j:j + sw * (ow - 1) + 1:sw]
                             for i in range(kh) for j in range(kw)])
        return total + patches.reshape(kh * kw * c, oh * ow) @ grad.reshape(oh * ow, o), None

    total = jnp.zeros((kh * kw * c, o), jnp.result_type(x, g))
    total, _ = lax.scan(add_image, total, (x, g))
    return total.reshape(kernel_shape)


def _backward(strides, padding, residuals, g):
    x, w = residuals
    (dx,) = jax.linear_transpose(lambda v: _plain(v, w, strides, padding), x)(g)
    return dx, kernel_gradient(x, g, w.shape, strides, padding).astype(w.dtype)


_conv_im2col_grad.defvjp(_forward, _backward)


def _pads(padding, x_shape, w_shape, strides):
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
    return tuple(tuple(int(p) for p in pair) for pair in padding)


def _uses_im2col_grad(lhs, rhs, dims, strides, pads, dilations, groups, extra) -> bool:
    if lhs.ndim != 4 or groups != 1 or any(extra) or lhs.dtype != jnp.float32:
        return False
    if rhs.dtype != jnp.float32 or any(d not in (None, (1, 1)) for d in dilations):
        return False
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims) != \
            lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC):
        return False
    if any(p < 0 for pair in pads for p in pair):
        return False
    kh, kw, c, _ = rhs.shape
    out_h = (lhs.shape[1] + sum(pads[0]) - kh) // strides[0] + 1
    out_w = (lhs.shape[2] + sum(pads[1]) - kw) // strides[1] + 1
    return kh * kw * c * out_h * out_w <= MAX_PATCH_ELEMENTS


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """``lax.conv_general_dilated``, whose kernel gradient on the CPU is computed by im2col."""
    strides = tuple(int(s) for s in window_strides)
    pads = _pads(padding, lhs.shape, rhs.shape, strides)
    dilations = tuple(None if d is None else tuple(d) for d in (lhs_dilation, rhs_dilation))
    extra = (batch_group_count != 1, precision is not None, preferred_element_type is not None)
    if _XLA_ONLY.get() or not _uses_im2col_grad(lhs, rhs, dimension_numbers, strides, pads,
                                                 dilations, feature_group_count, extra):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    return lax.platform_dependent(
        lhs, rhs,
        cpu=lambda x, w: _conv_im2col_grad(x, w, strides, pads),
        default=lambda x, w: _plain(x, w, strides, pads))


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""``flax.linen.Conv`` with :func:`conv_general_dilated` (the im2col kernel gradient on CPU)."""
