"""Data augmentation from the lectures, each a pure JAX function of ``(key, image)``.

Images are ``(H, W, C)`` float32 in [0, 1] (augmentation runs before normalisation); every
function returns an image of the same shape and range, and the same key always gives the same
result. Map over a batch with ``jax.vmap`` and one key per example.

- ``crop:P``: pad ``P`` zero pixels on every side, cut a random ``H x W`` window (the CIFAR
  recipe of He et al. 2016, section 4.2, with P=4);
- ``flip[:p]``: mirror left-right with probability ``p`` (0.5) (Krizhevsky et al. 2012);
- ``rotate:D``: rotate about the centre by an angle uniform in [-D, D] degrees, bilinear,
  zeros outside (Simard et al. 2003, affine distortions of MNIST);
- ``translate:T``: shift by a real offset uniform in [-T, T] pixels on each axis, bilinear;
- ``brightness:B``: add a delta uniform in [-B, B], clip to [0, 1];
- ``contrast:C``: scale the deviation from each channel's mean by a factor uniform in
  [1 - C, 1 + C], clip to [0, 1] (as ``tf.image.adjust_contrast``);
- ``noise:A``: salt-and-pepper noise hitting each pixel with probability ``A``
  (:func:`jaxcnn.ops.salt_and_pepper`).

A spec string lists them in the order they are applied: ``"crop:4,flip,rotate:10"``. A rotate
next to a translate is done as one affine warp (one bilinear interpolation, not two).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from jaxcnn.errors import ConfigError, InputShapeError, unknown
from jaxcnn.ops import salt_and_pepper


def random_crop(key: jax.Array, image: jax.Array, pad: int) -> jax.Array:
    """Zero-pads ``pad`` pixels on each side and takes a random window of the original size."""
    pad = int(pad)
    if pad == 0:
        return image
    height, width, channels = image.shape
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top, left = jax.random.randint(key, (2,), 0, 2 * pad + 1)
    return jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))


def random_flip(key: jax.Array, image: jax.Array, prob: float = 0.5) -> jax.Array:
    """Mirrors the image left-right with probability ``prob``."""
    return jnp.where(jax.random.uniform(key) < prob, image[:, ::-1], image)


def affine(image: jax.Array, angle, shift) -> jax.Array:
    """Rotates by ``angle`` radians about the centre, then shifts by ``shift`` (rows, cols);
    bilinear sampling, zeros outside the image."""
    height, width, _ = image.shape
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    # Output pixel (r, c) samples the input at the inverse transform of (r, c).
    y, x = rows - cy - shift[0], cols - cx - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_y, src_x = cos * y - sin * x + cy, sin * y + cos * x + cx
    sample = lambda plane: ndimage.map_coordinates(plane, [src_y, src_x], order=1,
                                                   mode="constant", cval=0.0)
    return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def _angle(key: jax.Array, degrees: float) -> jax.Array:
    limit = math.radians(degrees)
    return jax.random.uniform(key, minval=-limit, maxval=limit)


def _shift(key: jax.Array, pixels: float) -> jax.Array:
    return jax.random.uniform(key, (2,), minval=-pixels, maxval=pixels)


def random_rotate(key: jax.Array, image: jax.Array, degrees: float) -> jax.Array:
    """Rotates by an angle uniform in ``[-degrees, degrees]``."""
    return affine(image, _angle(key, degrees), jnp.zeros(2))


def random_translate(key: jax.Array, image: jax.Array, pixels: float) -> jax.Array:
    """Shifts by offsets uniform in ``[-pixels, pixels]`` on each axis."""
    return affine(image, jnp.float32(0.0), _shift(key, pixels))


def _rotate_and_translate(keys, values, rotate_first: bool, image: jax.Array) -> jax.Array:
    """A rotate and a translate next to each other, as one warp (one interpolation).

    Shifting by ``t`` then rotating by ``a`` about the centre is rotating by ``a`` then
    shifting by ``R(a) t``, so either order is one :func:`affine` call.
    """
    (k_rot, k_shift) = keys if rotate_first else keys[::-1]
    (degrees, pixels) = values if rotate_first else values[::-1]
    angle, shift = _angle(k_rot, degrees), _shift(k_shift, pixels)
    if not rotate_first:
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        # affine() maps output offsets by the inverse rotation, so its forward map is R(-a).
        shift = jnp.stack([cos * shift[0] + sin * shift[1], -sin * shift[0] + cos * shift[1]])
    return affine(image, angle, shift)


def random_brightness(key: jax.Array, image: jax.Array, delta: float) -> jax.Array:
    """Adds one offset uniform in ``[-delta, delta]`` to every pixel; clips to [0, 1]."""
    return jnp.clip(image + jax.random.uniform(key, minval=-delta, maxval=delta), 0.0, 1.0)


def random_contrast(key: jax.Array, image: jax.Array, amount: float) -> jax.Array:
    """Scales each channel's deviation from its mean by a factor in ``[1-amount, 1+amount]``."""
    factor = jax.random.uniform(key, minval=max(0.0, 1.0 - amount), maxval=1.0 + amount)
    mean = image.mean(axis=(0, 1), keepdims=True)
    return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


def random_noise(key: jax.Array, image: jax.Array, amount: float) -> jax.Array:
    """Salt-and-pepper noise on a [0, 1] image: pixels become 0 or 1 with probability ``amount``."""
    return salt_and_pepper(key, image, amount, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Kind:
    fn: Callable
    default: float
    low: float
    high: float
    integer: bool = False
    unit: str = ""


AUGMENTATIONS = {
    "crop": _Kind(random_crop, 4, 0, math.inf, integer=True, unit="pixels of padding"),
    "flip": _Kind(random_flip, 0.5, 0.0, 1.0, unit="probability"),
    "rotate": _Kind(random_rotate, 10.0, 0.0, 180.0, unit="degrees"),
    "translate": _Kind(random_translate, 2.0, 0.0, math.inf, unit="pixels"),
    "brightness": _Kind(random_brightness, 0.2, 0.0, 1.0, unit="delta on [0, 1]"),
    "contrast": _Kind(random_contrast, 0.2, 0.0, 1.0, unit="relative change"),
    "noise": _Kind(random_noise, 0.02, 0.0, 1.0, unit="probability a pixel is hit"),
}


@dataclasses.dataclass(frozen=True)
class Augment:
    """A sequence of augmentations: ``augment(key, image) -> image``; empty means identity."""

    ops: tuple[tuple[str, float], ...] = ()

    def __call__(self, key: jax.Array, image: jax.Array) -> jax.Array:
        if image.ndim != 3:
            raise InputShapeError(f"augmentations take one (H, W, C) image, got shape "
                                  f"{tuple(image.shape)}; map over a batch with jax.vmap")
        if not self.ops:
            return image
        keys = jax.random.split(key, len(self.ops))
        i = 0
        while i < len(self.ops):
            name, value = self.ops[i]
            pair = tuple(n for n, _ in self.ops[i:i + 2])
            if pair in (("rotate", "translate"), ("translate", "rotate")):
                values = (value, self.ops[i + 1][1])
                image = _rotate_and_translate(keys[i:i + 2], values, name == "rotate", image)
                i += 2
            else:
                image = AUGMENTATIONS[name].fn(keys[i], image, value)
                i += 1
            # The barrier keeps XLA from fusing one op into the next one's gathers, which
            # recomputes it per gathered pixel (rotate then translate ran 4x slower fused).
            image = jax.lax.optimization_barrier(image)
        return image

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __str__(self) -> str:
        return ",".join(f"{name}:{value:g}" for name, value in self.ops)


def parse_augment(spec: str | Augment | None) -> Augment:
    """Parses ``"crop:4,flip,rotate:10,..."``; ``""``, ``"none"`` or ``None`` mean no augmentation.

    A name without a value takes its default (crop 4, flip 0.5, rotate 10, translate 2,
    brightness 0.2, contrast 0.2, noise 0.02). Unknown names and values out of range raise.
    """
    if isinstance(spec, Augment):
        return spec
    if spec is None or spec.strip().lower() in ("", "none"):
        return Augment()
    ops = []
    for item in spec.split(","):
        name, _, value = item.strip().partition(":")
        name = name.strip().lower()
        if name not in AUGMENTATIONS:
            raise unknown("augmentation", name or item, AUGMENTATIONS)
        kind = AUGMENTATIONS[name]
        ops.append((name, _value(name, value.strip(), kind)))
    return Augment(tuple(ops))


def _value(name: str, text: str, kind: _Kind) -> float:
    if not text:
        return kind.default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"augmentation {name!r} takes a number ({kind.unit}), "
                          f"got {text!r}") from None
    if kind.integer and value != int(value):
        raise ConfigError(f"augmentation {name!r} takes a whole number ({kind.unit}), got {text!r}")
    if not kind.low <= value <= kind.high:
        raise ConfigError(f"augmentation {name!r} takes a value in [{kind.low:g}, {kind.high:g}] "
                          f"({kind.unit}), got {text!r}")
    return int(value) if kind.integer else value
