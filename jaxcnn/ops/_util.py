"""Small helpers shared by the ops modules: argument checks, dtypes and sliding windows.

Everything here runs at trace time on static Python values (sizes, strides, paddings), so the
checks cost nothing inside ``jax.jit`` and fail before any compilation.
"""
from __future__ import annotations

from numbers import Integral
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp

from jaxcnn.errors import ConfigError, InputShapeError

PAD_MODES = ("constant", "edge", "reflect", "symmetric")


def pair(value: int | Sequence[int], what: str, *, minimum: int) -> tuple[int, int]:
    """Returns ``(value, value)`` for an int, or the two ints of a pair, checked ``>= minimum``."""
    def is_int(v) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    if is_int(value):
        values = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        values = (int(value[0]), int(value[1]))
    else:
        raise ConfigError(f"{what} must be an int or a pair of ints (rows, columns), got {value!r}")
    if min(values) < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, got {value!r}")
    return values


def odd_size(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """A filter size: positive and odd on both axes, so that the window has a centre pixel."""
    size = pair(value, what, minimum=1)
    if size[0] % 2 == 0 or size[1] % 2 == 0:
        raise ConfigError(
            f"{what} must be odd so that the window has a centre pixel and the output keeps "
            f"the input's size, got {value!r}"
        )
    return size


def as_float(x) -> jax.Array:
    """``x`` as a JAX array of a floating dtype (integer images become the default float)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def check_image(image: jax.Array, fn: str) -> None:
    """Raises unless ``image`` is ``(H, W)`` or ``(H, W, C)``."""
    if image.ndim not in (2, 3):
        hint = ("; for a batch, map over it with jax.vmap(lambda im: "
                f"{fn}(im, ...))(images)" if image.ndim == 4 else "")
        raise InputShapeError(
            f"{fn} takes an (H, W) or (H, W, C) image, got shape {tuple(image.shape)}{hint}"
        )


def check_mode(mode: str) -> None:
    """Raises unless ``mode`` is one of the padding modes of :data:`PAD_MODES`."""
    if mode not in PAD_MODES:
        raise ConfigError(f"unknown padding mode {mode!r}; known modes: {', '.join(PAD_MODES)}")


def pad_hw(x: jax.Array, pad: tuple[tuple[int, int], tuple[int, int]], mode: str = "constant",
           value: float = 0.0) -> jax.Array:
    """Pads the first two (spatial) axes of ``x``; trailing channel axes are left alone."""
    widths = tuple(pad) + ((0, 0),) * (x.ndim - 2)
    if mode == "constant":
        return jnp.pad(x, widths, mode="constant", constant_values=value)
    return jnp.pad(x, widths, mode=mode)


def windows(x: jax.Array, size: tuple[int, int], stride: tuple[int, int],
            out: tuple[int, int]) -> Iterator[tuple[int, int, jax.Array]]:
    """Yields ``(u, v, view)`` for every offset ``(u, v)`` of a ``size`` window.

    ``view[i, j]`` is ``x[i * sh + u, j * sw + v]``: the pixel at offset ``(u, v)`` inside the
    window of output position ``(i, j)``. Summing ``kernel[u, v] * view`` over all offsets is
    exactly the sliding-window sum of the textbook definition, computed as ``kh * kw``
    whole-array operations instead of a loop over output pixels.
    """
    (kh, kw), (sh, sw), (oh, ow) = size, stride, out
    for u in range(kh):
        for v in range(kw):
            yield u, v, x[u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw]
