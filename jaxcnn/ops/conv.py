"""Convolution and pooling written out the way the lectures compute them by hand.

A convolutional layer slides a small kernel over the image and, at every position, multiplies
the kernel with the patch under it and adds the products up (Goodfellow, Bengio and Courville,
*Deep Learning*, MIT Press 2016, ch. 9.1-9.5; Dumoulin and Visin, "A guide to convolution
arithmetic for deep learning", 2016). Here that sum is computed literally: for every kernel
offset ``(u, v)`` take the strided view of the (padded) image that the offset touches, scale it
by ``kernel[u, v]`` and accumulate. The result matches ``jax.lax.conv_general_dilated`` and
``jax.lax.reduce_window`` (the tests check it) while staying readable.

Size arithmetic (see :func:`jaxcnn.ops.conv_output_size`): an ``H``-pixel axis, kernel ``K``,
zero padding ``P`` on each side and stride ``S`` give ``(H + 2P - K) // S + 1`` outputs. When
``S`` does not divide ``H + 2P - K`` the division is floored, as in PyTorch, Flax and
``lax.conv``: the last rows or columns that do not fill a whole window are simply not visited.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxcnn.errors import InputShapeError
from jaxcnn.ops._util import as_float, check_image, pad_hw, pair, windows
from jaxcnn.ops.receptive import conv_output_size

IntOrPair = int | Sequence[int]


def _out_size(fn: str, shape: tuple[int, ...], kernel: tuple[int, int],
              stride: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int]:
    """Output height and width, or an :class:`InputShapeError` naming the shapes."""
    padded = (shape[0] + 2 * padding[0], shape[1] + 2 * padding[1])
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise InputShapeError(
            f"{fn}: the {kernel[0]}x{kernel[1]} window is bigger than the image of shape "
            f"{tuple(shape)} padded by {padding} ({padded[0]}x{padded[1]}); use a smaller "
            "window, more padding or a bigger image"
        )
    return (conv_output_size(shape[0], kernel[0], padding[0], stride[0]),
            conv_output_size(shape[1], kernel[1], padding[1], stride[1]))


def conv2d(image: jax.Array, kernel: jax.Array, *, stride: IntOrPair = 1,
           padding: IntOrPair = 0, bias: float | jax.Array = 0.0) -> jax.Array:
    """Slides one filter over an image: the cross-correlation a convolutional layer computes.

    For a 2-D image ``I`` and a ``(kh, kw)`` kernel ``K``, with the image zero-padded by ``P``
    and stride ``S``::

        out[i, j] = bias + sum_{u < kh, v < kw} K[u, v] * I_pad[i*S + u, j*S + v]

    For an ``(H, W, C)`` image the kernel is ``(kh, kw, C)`` and the sum also runs over the
    channels, so one filter gives one 2-D feature map, just as one output channel of a
    ``nn.Conv`` layer does. The kernel is *not* flipped: mathematicians call this
    cross-correlation, deep-learning libraries call it convolution (Goodfellow et al., ch. 9.1).
    Flipping the kernel (``K[::-1, ::-1]``) gives the true convolution.

    Output size per axis: ``(H + 2P - K) // S + 1``, floored when the stride does not fit
    exactly (the last partial window is skipped, as in PyTorch).

    Several filters: ``jax.vmap(lambda k: conv2d(image, k), in_axes=-1, out_axes=-1)(kernels)``
    on a ``(kh, kw, C, F)`` stack gives the ``(H', W', F)`` output of a whole layer.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` array (integers are converted to float).
      kernel: ``(kh, kw)`` for a 2-D image, ``(kh, kw, C)`` for a 3-D one.
      stride: step between windows, an int or a pair ``(rows, columns)``.
      padding: zeros added on each side, an int or a pair ``(rows, columns)``.
      bias: added to every output.

    Returns:
      The ``(H', W')`` feature map.

    Raises:
      InputShapeError: wrong number of dimensions, channel mismatch, or a kernel bigger than
        the padded image.
      ConfigError: a stride below 1 or a negative padding.
    """
    image, kernel = as_float(image), as_float(kernel)
    check_image(image, "conv2d")
    if kernel.ndim != image.ndim:
        want = "(kh, kw)" if image.ndim == 2 else f"(kh, kw, {image.shape[2]})"
        raise InputShapeError(
            f"conv2d: a {image.ndim}-D image of shape {tuple(image.shape)} needs a {want} "
            f"kernel, got kernel shape {tuple(kernel.shape)}"
        )
    if image.ndim == 3 and kernel.shape[2] != image.shape[2]:
        raise InputShapeError(
            f"conv2d: the kernel of shape {tuple(kernel.shape)} has {kernel.shape[2]} channels "
            f"but the image of shape {tuple(image.shape)} has {image.shape[2]}; they must match"
        )
    stride = pair(stride, "conv2d stride", minimum=1)
    padding = pair(padding, "conv2d padding", minimum=0)
    out = _out_size("conv2d", image.shape, tuple(kernel.shape[:2]), stride, padding)
    return _conv2d(image, kernel, bias, stride=stride, padding=padding, out=out)


@functools.partial(jax.jit, static_argnames=("stride", "padding", "out"))
def _conv2d(image, kernel, bias, *, stride, padding, out):
    """The sliding sum itself, compiled once per shape (the checks above run in Python)."""
    padded = pad_hw(image, ((padding[0],) * 2, (padding[1],) * 2))
    dtype = jnp.result_type(image, kernel)
    total = jnp.zeros(out + image.shape[2:], dtype)
    for u, v, view in windows(padded, kernel.shape[:2], stride, out):
        total = total + kernel[u, v] * view
    if image.ndim == 3:
        total = total.sum(axis=-1)
    return total + jnp.asarray(bias, dtype)


def _pool(fn: str, x: jax.Array, size: IntOrPair, stride: IntOrPair | None,
          padding: IntOrPair, reduce: str) -> jax.Array:
    x = as_float(x)
    check_image(x, fn)
    size = pair(size, f"{fn} size", minimum=1)
    stride = size if stride is None else pair(stride, f"{fn} stride", minimum=1)
    padding = pair(padding, f"{fn} padding", minimum=0)
    out = _out_size(fn, x.shape, size, stride, padding)
    return _pool_windows(x, size=size, stride=stride, padding=padding, out=out, reduce=reduce)


@functools.partial(jax.jit, static_argnames=("size", "stride", "padding", "out", "reduce"))
def _pool_windows(x, *, size, stride, padding, out, reduce):
    padded = pad_hw(x, ((padding[0],) * 2, (padding[1],) * 2))
    views = [view for _, _, view in windows(padded, size, stride, out)]
    if reduce == "max":
        result = views[0]
        for view in views[1:]:
            result = jnp.maximum(result, view)
        return result
    return sum(views[1:], views[0]) / (size[0] * size[1])


def max_pool2d(x: jax.Array, size: IntOrPair = 2, stride: IntOrPair | None = None) -> jax.Array:
    """Max pooling: the largest value in each ``size`` window, channel by channel.

    ``out[i, j, c] = max_{u, v} x[i*S + u, j*S + v, c]``. The stride defaults to the window
    size (non-overlapping windows, the usual 2x2 / stride 2 halving). No padding; an odd size
    is floored as in :func:`conv2d`. Max pooling makes the output insensitive to small shifts
    of a feature inside the window (Goodfellow et al., ch. 9.3).

    Args:
      x: ``(H, W)`` or ``(H, W, C)``; each channel is pooled on its own.
      size: window, an int or a pair.
      stride: step between windows; ``None`` means ``size``.

    Returns:
      ``(H', W')`` or ``(H', W', C)`` with ``H' = (H - size) // stride + 1``.
    """
    return _pool("max_pool2d", x, size, stride, 0, "max")


def avg_pool2d(x: jax.Array, size: IntOrPair = 2, stride: IntOrPair | None = None,
               padding: IntOrPair = 0) -> jax.Array:
    """Average pooling: the mean of each ``size`` window, channel by channel.

    ``out[i, j, c] = mean_{u, v} x_pad[i*S + u, j*S + v, c]``. The stride defaults to the
    window size. Padding adds zeros that *count* in the mean (every window is divided by
    ``size[0] * size[1]``), like PyTorch's default ``count_include_pad=True`` and Flax's
    ``nn.avg_pool`` default; a window near the border therefore averages towards zero.

    Args:
      x: ``(H, W)`` or ``(H, W, C)``; each channel is pooled on its own.
      size: window, an int or a pair.
      stride: step between windows; ``None`` means ``size``.
      padding: zeros added on each side, an int or a pair.

    Returns:
      ``(H', W')`` or ``(H', W', C)`` with ``H' = (H + 2P - size) // stride + 1``.
    """
    return _pool("avg_pool2d", x, size, stride, padding, "mean")
