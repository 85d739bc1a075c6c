"""Classical convolution operations, written out the way the lectures compute them by hand.

Pure, jit-able functions on ``(H, W)`` or ``(H, W, C)`` float arrays (one image; map over a
batch with ``jax.vmap``). Sizes, strides, paddings and modes are static Python values: under
``jax.jit`` pass them through ``functools.partial`` or ``static_argnames``.

- :mod:`~jaxcnn.ops.conv`: :func:`conv2d` (cross-correlation with stride, zero padding and
  bias), :func:`max_pool2d`, :func:`avg_pool2d`;
- :mod:`~jaxcnn.ops.filters`: :func:`sobel_xy`, :func:`sobel`, :func:`gaussian_kernel`,
  :func:`gaussian_blur`, :func:`box_blur`, :func:`sharpen`, :func:`median_filter`,
  :func:`salt_and_pepper`, and the general :func:`correlate`;
- :mod:`~jaxcnn.ops.receptive`: :func:`conv_output_size`, and :func:`receptive_field` of a
  registered model, read from its jaxpr (:func:`format_receptive_field` prints the table).

``ops`` knows nothing of training or data; it imports :mod:`jaxcnn.models` only inside
:func:`receptive_field`.
"""
from jaxcnn.ops.conv import avg_pool2d, conv2d, max_pool2d
from jaxcnn.ops.filters import (
    LAPLACIAN,
    SOBEL_X,
    SOBEL_Y,
    box_blur,
    correlate,
    gaussian_blur,
    gaussian_kernel,
    median_filter,
    salt_and_pepper,
    sharpen,
    sobel,
    sobel_xy,
)
from jaxcnn.ops.receptive import (
    LayerField,
    conv_output_size,
    format_receptive_field,
    receptive_field,
)

__all__ = [
    "LAPLACIAN",
    "SOBEL_X",
    "SOBEL_Y",
    "LayerField",
    "avg_pool2d",
    "box_blur",
    "conv2d",
    "conv_output_size",
    "correlate",
    "format_receptive_field",
    "gaussian_blur",
    "gaussian_kernel",
    "max_pool2d",
    "median_filter",
    "receptive_field",
    "salt_and_pepper",
    "sharpen",
    "sobel",
    "sobel_xy",
]
