"""Classical image filters: edges, blur, sharpening, denoising, and noise to denoise.

Each linear filter here is a small kernel slid over the image with :func:`correlate` (the same
sliding sum as :func:`jaxcnn.ops.conv2d`, padded so the output keeps the input's size). On an
``(H, W, C)`` image every channel is filtered on its own with the same 2-D kernel. These are
the hand-designed filters that a trained CNN's first layer ends up resembling (Goodfellow et
al., *Deep Learning*, ch. 9.10; Gonzalez and Woods, *Digital Image Processing*, ch. 3).

Padding modes (``mode=``), named as in ``jnp.pad``, for the border pixels a window overhangs:

- ``"constant"``: zeros, what a CNN layer with "same" padding does (SciPy ``mode="constant"``);
- ``"edge"``: repeat the border pixel (SciPy ``"nearest"``);
- ``"symmetric"``: mirror including the border pixel (SciPy ``"reflect"``);
- ``"reflect"``: mirror about the border pixel (SciPy ``"mirror"``).

The linear filters default to zeros, so they agree with the lecture arithmetic; the median
filter defaults to ``"edge"``, because zeros would win the vote in the corners.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ConfigError
from jaxcnn.ops._util import as_float, check_image, check_mode, odd_size, pad_hw, windows

# Sobel and Feldman (1968): a central difference [-1, 0, 1] across, smoothed by [1, 2, 1] along.
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.T.copy()
# The 4-neighbour Laplacian, a discrete second derivative: centre minus its four neighbours.
LAPLACIAN = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
for _constant in (SOBEL_X, SOBEL_Y, LAPLACIAN):
    _constant.flags.writeable = False


def _concrete(value) -> float | None:
    """``float(value)``, or ``None`` when ``value`` is traced inside ``jax.jit``."""
    try:
        return float(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None


def correlate(image: jax.Array, kernel, *, mode: str = "constant") -> jax.Array:
    """Slides a 2-D ``kernel`` with odd sides over each channel; output has the input's size.

    ``out[i, j] = sum_{u, v} kernel[u, v] * I_pad[i + u, j + v]`` with the image padded by
    ``kh // 2`` rows and ``kw // 2`` columns (cross-correlation, no flip, as in CNN layers).

    Args:
      image: ``(H, W)`` or ``(H, W, C)``.
      kernel: ``(kh, kw)`` with ``kh`` and ``kw`` odd.
      mode: border padding, one of ``"constant"`` (zeros), ``"edge"``, ``"reflect"``,
        ``"symmetric"`` (see the module docstring).
    """
    image, kernel = as_float(image), as_float(kernel)
    check_image(image, "correlate")
    check_mode(mode)
    if kernel.ndim != 2:
        raise ConfigError(f"correlate takes a 2-D (kh, kw) kernel, got shape {tuple(kernel.shape)}")
    odd_size(tuple(kernel.shape), "the kernel shape")
    return _correlate(image, kernel, mode=mode)


def _slide(image, kernel, mode):
    """The sliding sum of :func:`correlate`, without the checks."""
    kh, kw = kernel.shape
    padded = pad_hw(image, ((kh // 2,) * 2, (kw // 2,) * 2), mode)
    total = jnp.zeros(image.shape, jnp.result_type(image, kernel))
    for u, v, view in windows(padded, (kh, kw), (1, 1), image.shape[:2]):
        total = total + kernel[u, v] * view
    return total


# Compiled once per shape and mode, so that calls outside jax.jit are fast too.
_correlate = jax.jit(_slide, static_argnames="mode")


@functools.partial(jax.jit, static_argnames="mode")
def _separable(image, column, row, *, mode):
    """Correlates with the kernel ``outer(column, row)`` as a row pass then a column pass."""
    return _slide(_slide(image, row[None, :], mode), column[:, None], mode)


@functools.partial(jax.jit, static_argnames=("mode", "magnitude"))
def _sobel(image, *, mode, magnitude):
    gx, gy = _slide(image, jnp.asarray(SOBEL_X), mode), _slide(image, jnp.asarray(SOBEL_Y), mode)
    return jnp.sqrt(gx**2 + gy**2) if magnitude else (gx, gy)


def _checked(image, fn: str, mode: str) -> jax.Array:
    image = as_float(image)
    check_image(image, fn)
    check_mode(mode)
    return image


def sobel_xy(image: jax.Array, *, mode: str = "constant") -> tuple[jax.Array, jax.Array]:
    """The Sobel derivatives ``(gx, gy)`` of an image (Sobel and Feldman, 1968).

    ``gx`` uses ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``: a central difference across the
    columns, smoothed down the rows by ``[1, 2, 1]``. It measures horizontal change, so it
    lights up on *vertical* edges, and it is positive where the image gets brighter to the
    right. ``gy`` is its transpose: positive where the image gets brighter going *down*
    (row indices grow downwards). Both are applied as cross-correlation (no flip) with zero
    padding by default, so a bright region touching the border shows a spurious edge there.

    Returns:
      ``(gx, gy)``, each the size of ``image``.
    """
    return _sobel(_checked(image, "sobel_xy", mode), mode=mode, magnitude=False)


def sobel(image: jax.Array, *, mode: str = "constant") -> jax.Array:
    """Gradient magnitude ``sqrt(gx**2 + gy**2)`` from :func:`sobel_xy`: edge strength."""
    return _sobel(_checked(image, "sobel", mode), mode=mode, magnitude=True)


def _gaussian_1d(sigma, size: int | None, fn: str) -> jax.Array:
    value = _concrete(sigma)
    if value is not None and not value > 0:
        raise ConfigError(f"{fn}: sigma must be positive, got {sigma!r}")
    if size is None:
        if value is None:
            raise ConfigError(f"{fn}: give size= when sigma is traced (e.g. inside jax.jit)")
        size = 2 * math.ceil(3 * value) + 1
    size = odd_size(size, f"{fn} size")[0]
    x = np.arange(size) - size // 2
    if value is not None:  # a plain number: NumPy, no compilation
        g = np.exp(-(x**2) / (2 * value**2))
        return jnp.asarray(g / g.sum(), jnp.result_type(float))
    x = jnp.asarray(x, jnp.result_type(float))
    g = jnp.exp(-(x**2) / (2 * jnp.asarray(sigma, x.dtype) ** 2))
    return g / g.sum()


def gaussian_kernel(sigma: float, size: int | None = None) -> jax.Array:
    """The ``(size, size)`` Gaussian kernel, normalised to sum to 1.

    ``G[u, v] = exp(-(x_u**2 + y_v**2) / (2 sigma**2)) / Z`` with ``x`` and ``y`` counted from
    the centre pixel and ``Z`` the sum of the unnormalised weights (so blurring keeps the mean
    brightness). The default size ``2 * ceil(3 sigma) + 1`` reaches three standard deviations
    each side, where a weight has fallen to ``exp(-4.5)``, about 1.1% of the centre's. The
    kernel is the outer product of two 1-D Gaussians (it is *separable*), which
    :func:`gaussian_blur` uses to filter with ``2 * size`` instead of ``size**2``
    multiplications per pixel.

    Args:
      sigma: standard deviation in pixels, > 0.
      size: odd side length; default ``2 * ceil(3 * sigma) + 1``.
    """
    g = _gaussian_1d(sigma, size, "gaussian_kernel")
    return jnp.outer(g, g)


def gaussian_blur(image: jax.Array, sigma: float, size: int | None = None, *,
                  mode: str = "constant") -> jax.Array:
    """Blurs with :func:`gaussian_kernel` (as a row pass then a column pass); same size output.

    Matches ``scipy.ndimage.gaussian_filter(image, sigma, mode=..., radius=size // 2)`` per
    channel (SciPy's ``"constant"`` for the default zero padding, ``"nearest"`` for ``"edge"``).
    """
    image = _checked(image, "gaussian_blur", mode)
    g = _gaussian_1d(sigma, size, "gaussian_blur")
    return _separable(image, g, g, mode=mode)


def box_blur(image: jax.Array, size: int = 3, *, mode: str = "constant") -> jax.Array:
    """Replaces each pixel by the mean of the ``size x size`` window around it (odd ``size``).

    The box kernel ``ones((k, k)) / k**2`` is separable too (a row mean, then a column mean).
    """
    image = _checked(image, "box_blur", mode)
    kh, kw = odd_size(size, "box_blur size")
    return _separable(image, jnp.full(kh, 1.0 / kh), jnp.full(kw, 1.0 / kw), mode=mode)


def sharpen(image: jax.Array, amount: float = 1.0, *, mode: str = "constant") -> jax.Array:
    """Sharpens with the kernel ``identity + amount * LAPLACIAN``.

    ``LAPLACIAN = [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]`` is four times (pixel minus the mean of
    its four neighbours), a measure of how much a pixel stands out. Adding it back exaggerates
    every local difference. ``amount=1`` gives the classic sharpening kernel
    ``[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]``; ``amount=0`` returns the image unchanged. The
    weights sum to 1, so flat regions keep their value; the output is not clipped and can leave
    the input's range near edges.
    """
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    value = _concrete(amount)
    if value is not None:  # a plain number: build the kernel in NumPy
        kernel = identity + value * LAPLACIAN
    else:
        kernel = jnp.asarray(identity) + amount * jnp.asarray(LAPLACIAN)
    return correlate(image, kernel, mode=mode)


def median_filter(image: jax.Array, size: int = 3, *, mode: str = "edge") -> jax.Array:
    """Replaces each pixel by the median of the ``size x size`` window around it.

    A non-linear filter: one outlier in a window (a salt or pepper pixel) cannot move the
    median, so isolated noise vanishes while step edges stay sharp, which no linear blur
    achieves. The border is padded by repeating the edge pixel (``mode="edge"``, SciPy's
    ``"nearest"``) so that corners are not voted to zero; ``mode="constant"`` pads with zeros.
    Each channel of an ``(H, W, C)`` image is filtered on its own.
    """
    image = _checked(image, "median_filter", mode)
    return _median(image, size=odd_size(size, "median_filter size"), mode=mode)


@functools.partial(jax.jit, static_argnames=("size", "mode"))
def _median(image, *, size, mode):
    kh, kw = size
    padded = pad_hw(image, ((kh // 2,) * 2, (kw // 2,) * 2), mode)
    views = [view for _, _, view in windows(padded, (kh, kw), (1, 1), image.shape[:2])]
    # an odd count of values: the median is the middle one after sorting
    return jnp.sort(jnp.stack(views, axis=-1), axis=-1)[..., kh * kw // 2]


def salt_and_pepper(key: jax.Array, image: jax.Array, amount: float, low: float = 0.0,
                    high: float = 1.0) -> jax.Array:
    """Impulse noise: each pixel independently becomes ``low`` or ``high`` with prob. ``amount``.

    Every pixel is hit with probability ``amount`` (so the hit fraction is ``amount`` in
    expectation, not exactly), and a hit pixel is salt (``high``) or pepper (``low``) with
    probability 1/2 each. On an ``(H, W, C)`` image a hit sets all channels of the pixel, giving
    white and black dots. The same ``key`` always gives the same noise.

    Args:
      key: a ``jax.random`` key.
      image: ``(H, W)`` or ``(H, W, C)``.
      amount: probability in ``[0, 1]`` that a pixel is replaced.
      low, high: the pepper and salt values (the image's black and white).
    """
    image = as_float(image)
    check_image(image, "salt_and_pepper")
    value = _concrete(amount)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"salt_and_pepper: amount must be in [0, 1], got {amount!r}")
    return _salt_and_pepper(key, image, amount, low, high)


@jax.jit
def _salt_and_pepper(key, image, amount, low, high):
    # One uniform draw u per pixel: u < amount / 2 is pepper, amount / 2 <= u < amount is salt.
    u = jax.random.uniform(key, image.shape[:2])
    hit, salt = u < amount, u >= amount / 2
    noise = jnp.where(salt, jnp.asarray(high, image.dtype), jnp.asarray(low, image.dtype))
    if image.ndim == 3:
        hit, noise = hit[..., None], noise[..., None]
    return jnp.where(hit, noise, image)
