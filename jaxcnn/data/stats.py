"""Per-channel and per-pixel statistics of a training split, on images scaled to [0, 1].

Published values are used where the community has settled on them; they are the mean and the
population standard deviation of every pixel of the training split, channel by channel:

- MNIST 0.1307 / 0.3081 (the PyTorch MNIST example); measured here from the original files:
  0.13066 / 0.30811.
- Fashion-MNIST 0.2860 / 0.3530 (measured from the original files: 0.28604 / 0.35302).
- CIFAR-10 (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) and CIFAR-100
  (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762), over the 50,000 training images.
- ImageNet (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), torchvision's reference values, also
  used for its subsets (imagenette).

Any other dataset gets its statistics computed over its training split (up to
``MAX_STATS_EXAMPLES`` images, read in file order), see :func:`channel_stats`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

MAX_STATS_EXAMPLES = 10_000
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "published: torchvision ImageNet")
PUBLISHED = {
    "mnist": ((0.1307,), (0.3081,), "published: PyTorch MNIST example"),
    "fashion_mnist": ((0.2860,), (0.3530,), "published: Fashion-MNIST training set"),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "published: CIFAR-10 training set"),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                 "published: CIFAR-100 training set"),
    "imagenet2012": IMAGENET,
    "imagenette": IMAGENET,
}


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation of each channel on [0, 1], and where they come from."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


class _Moments:
    """Running per-channel sums in float64 (exact enough for billions of pixels)."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, images: np.ndarray) -> None:
        pixels = np.asarray(images, np.float64).reshape(-1, images.shape[-1]) / 255.0
        self.count += len(pixels)
        self.total = self.total + pixels.sum(0)
        self.squares = self.squares + np.square(pixels).sum(0)

    def result(self, source: str) -> ChannelStats:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean ** 2, 0.0))
        return ChannelStats(tuple(map(float, mean)), tuple(map(float, std)), source)


def compute_channel_stats(images: np.ndarray) -> ChannelStats:
    """Per-channel mean/std over all pixels of uint8 NHWC ``images``, on [0, 1]."""
    moments = _Moments()
    for start in range(0, len(images), 4096):
        moments.add(images[start:start + 4096])
    return moments.result(f"computed over {len(images)} training images")


def stats_from_stream(batches, limit: int = MAX_STATS_EXAMPLES) -> ChannelStats:
    """Per-channel statistics over the first ``limit`` images of an iterable of image arrays.

    Each item is one ``(H, W, C)`` image or a batch ``(N, H, W, C)``; sizes may vary.
    """
    moments, seen = _Moments(), 0
    for images in batches:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        images = images[:limit - seen]
        moments.add(images)
        seen += len(images)
        if seen >= limit:
            break
    return moments.result(f"computed over the first {seen} training images")


def pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean image and the per-pixel standard deviation ``(H, W, C)`` on [0, 1], float32.

    A pixel with no variation in the training set (MNIST's border) gets std 1, so it is only
    centred, as scikit-learn's ``StandardScaler`` does for constant features.
    """
    moments_sum = np.zeros(images.shape[1:], np.float64)
    squares = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), 4096):
        block = images[start:start + 4096].astype(np.float64) / 255.0
        moments_sum += block.sum(0)
        squares += np.square(block).sum(0)
    mean = moments_sum / len(images)
    std = np.sqrt(np.maximum(squares / len(images) - mean ** 2, 0.0))
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)
