"""Named preprocessing from the lectures, as pure JAX functions of one image.

Every pipeline first scales uint8 pixels to float32 in [0, 1] (``x / 255``); the name then
picks what follows (cs231n "Data preprocessing"; Krizhevsky et al. 2012 for the mean image;
He et al. 2016 / torchvision references for the ImageNet crops):

- ``"unit"``: nothing more, values in [0, 1];
- ``"centered"``: ``x - 0.5``, values in [-0.5, 0.5] (LeCun et al., "Efficient BackProp");
- ``"per_pixel"``: ``(x - mean_image) / std_image``, both taken pixel by pixel over the training
  split (a pixel constant in training is only centred);
- ``"per_channel"``: ``(x - mean_c) / std_c`` with the training split's channel statistics;
- ``"imagenet"``: training images get a random-resized crop (area 8%-100% of the image, aspect
  ratio 3/4-4/3, ten tries then the centre) resized to ``image_size`` (224); evaluation images
  the central crop that resizing the shorter side to ``image_size * 256 / 224`` and cropping
  ``image_size`` gives; then per-channel standardisation.

Geometry runs before augmentation and normalisation after it, so augmentations see [0, 1]
images. The streaming pipeline does the ImageNet geometry in tf.data instead (images of many
sizes), and only :meth:`Preprocess.normalise` on the device.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ConfigError, InputShapeError, unknown

PREPROCESSORS = ("unit", "centered", "per_pixel", "per_channel", "imagenet")
RRC_AREA = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_TRIES = 10
EVAL_RESIZE_RATIO = 256.0 / 224.0


def to_unit(image: jax.Array) -> jax.Array:
    """uint8 to float32 in [0, 1], the same arithmetic as :func:`jaxcnn.data.batches.to_float`."""
    return image.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


def _crop_resize(image: jax.Array, top, left, height, width, size: int) -> jax.Array:
    """Resamples the box ``(top, left, height, width)`` of ``image`` to ``size x size``
    (bilinear, antialiased when shrinking); the box may be traced."""
    scale = jnp.stack([size / height, size / width]).astype(jnp.float32)
    translation = -jnp.stack([top, left]).astype(jnp.float32) * scale
    return jax.image.scale_and_translate(image, (size, size, image.shape[-1]), (0, 1), scale,
                                         translation, method="linear", antialias=True)


def random_resized_crop(key: jax.Array, image: jax.Array, size: int,
                        area=RRC_AREA, ratio=RRC_RATIO) -> jax.Array:
    """Inception-style crop: a box of random area and aspect ratio, resized to ``size``."""
    height, width = image.shape[0], image.shape[1]
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    target = height * width * jax.random.uniform(k_area, (RRC_TRIES,), minval=area[0],
                                                 maxval=area[1])
    aspect = jnp.exp(jax.random.uniform(k_ratio, (RRC_TRIES,), minval=math.log(ratio[0]),
                                        maxval=math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(target * aspect))
    h = jnp.round(jnp.sqrt(target / aspect))
    ok = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = jnp.argmax(ok)
    # No try fits: the whole image, its aspect ratio clamped to the range (torchvision's fallback).
    side_ratio = width / height
    fb_w = width if ratio[0] <= side_ratio <= ratio[1] else (
        round(height * ratio[1]) if side_ratio > ratio[1] else width)
    fb_h = height if ratio[0] <= side_ratio <= ratio[1] else (
        round(width / ratio[0]) if side_ratio < ratio[0] else height)
    h = jnp.where(ok.any(), h[first], fb_h)
    w = jnp.where(ok.any(), w[first], fb_w)
    top = jnp.floor(jax.random.uniform(k_top) * (height - h + 1))
    left = jnp.floor(jax.random.uniform(k_left) * (width - w + 1))
    return _crop_resize(image, top, left, h, w, size)


def center_crop(image: jax.Array, size: int, resize_ratio: float = EVAL_RESIZE_RATIO) -> jax.Array:
    """The central ``size`` crop after resizing the shorter side to ``size * resize_ratio``."""
    height, width = image.shape[0], image.shape[1]
    side = min(height, width) / resize_ratio
    top, left = (height - side) / 2.0, (width - side) / 2.0
    return _crop_resize(image, top, left, side, side, size)


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocess:
    """One named preprocessing: geometry for training and evaluation, then normalisation.

    All methods take and return one ``(H, W, C)`` float32 image; map them over a batch with
    ``jax.vmap``. ``output_shape`` is the ``(H, W, C)`` batches carry. Equal by value (a
    static argument of jitted functions).
    """

    name: str
    output_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    crop_size: int | None = None

    @functools.cached_property
    def _key(self):
        return (self.name, tuple(self.output_shape), self.crop_size,
                np.asarray(self.mean, np.float32).tobytes(),
                np.asarray(self.std, np.float32).tobytes())

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, Preprocess) and self._key == other._key

    def train_geometry(self, key: jax.Array, image: jax.Array) -> jax.Array:
        if self.crop_size is None:
            return image
        return random_resized_crop(key, image, self.crop_size)

    def eval_geometry(self, image: jax.Array) -> jax.Array:
        if self.crop_size is None:
            return image
        return center_crop(image, self.crop_size)

    def normalise(self, image: jax.Array) -> jax.Array:
        if self.name == "unit":
            return image
        return (image - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def make_preprocess(name: str, image_shape, *, mean=(), std=(), pixel_mean=None,
                    pixel_std=None, image_size: int | None = None) -> Preprocess:
    """The :class:`Preprocess` called ``name`` for images of ``image_shape`` ``(H, W, C)``.

    ``mean``/``std`` are the per-channel statistics (``per_channel``, ``imagenet``);
    ``pixel_mean``/``pixel_std`` the ``(H, W, C)`` ones (``per_pixel``). ``image_size`` is the
    crop side of ``imagenet`` (default 224); other preprocessings keep the image's size.
    """
    if name not in PREPROCESSORS:
        raise unknown("preprocessing", name, PREPROCESSORS)
    shape = tuple(image_shape)
    channels = shape[-1]
    fixed = len(shape) == 3 and None not in shape
    if name != "imagenet" and not fixed:
        raise InputShapeError(
            f"preprocessing {name!r} keeps each image's size, but these images have no fixed "
            f"shape {shape}; use preprocess='imagenet', which crops them all to image_size")
    if name == "imagenet":
        size = image_size or 224
        out = (size, size, channels)
        mean_, std_ = _per_channel(mean, std, channels, name)
        return Preprocess(name, out, mean_, std_, crop_size=size)
    if image_size is not None and image_size != shape[0]:
        raise ConfigError(f"image_size={image_size} is only for preprocess='imagenet'; "
                          f"{name!r} keeps the images' {shape[0]}x{shape[1]}")
    if name == "unit":
        return Preprocess(name, shape, np.zeros(channels, np.float32),
                          np.ones(channels, np.float32))
    if name == "centered":
        return Preprocess(name, shape, np.full(channels, 0.5, np.float32),
                          np.ones(channels, np.float32))
    if name == "per_channel":
        return Preprocess(name, shape, *_per_channel(mean, std, channels, name))
    if pixel_mean is None or pixel_std is None:
        raise ConfigError("preprocess='per_pixel' needs the training split's mean image and "
                          "per-pixel std (jaxcnn.data.stats.pixel_stats); only the in-memory "
                          "pipeline computes them")
    pixel_mean, pixel_std = np.asarray(pixel_mean, np.float32), np.asarray(pixel_std, np.float32)
    if pixel_mean.shape != shape or pixel_std.shape != shape:
        raise InputShapeError(f"per-pixel statistics of shape {pixel_mean.shape} do not match "
                              f"images of shape {shape}")
    return Preprocess(name, shape, pixel_mean, pixel_std)


def _per_channel(mean, std, channels: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise InputShapeError(f"preprocess={name!r} needs one mean and one std per channel "
                              f"({channels}), got mean {tuple(mean.tolist())} and std "
                              f"{tuple(std.tolist())}")
    if (std <= 0).any():
        raise ConfigError(f"preprocess={name!r}: every channel std must be positive, got {std}")
    return mean, std
