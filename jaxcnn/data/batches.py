"""Batches from in-memory arrays: a seeded permutation per epoch, and padded evaluation.

Training batches drop the last partial batch (every step has the same shape, so one
compilation serves the run); the permutation of epoch ``e`` depends only on ``(seed, e)``, so
the stream is the same on every run and is resumed exactly from the epoch number.
Evaluation batches cover the split once: the last one is padded and carries a ``mask`` that is
zero on the padding, so metrics computed as masked sums count every example exactly once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from jaxcnn.errors import DataError


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]."""
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in ``epoch``: a function of ``(seed, epoch)`` alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full training batches in an epoch; raises if the split cannot fill one."""
    if batch_size > num_examples:
        raise DataError(f"batch size {batch_size} is larger than the training split "
                        f"({num_examples} examples); choose --batch-size <= {num_examples}")
    return num_examples // batch_size


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  epoch: int, start_step: int = 0) -> Iterator[dict]:
    """Yields the full batches of ``epoch`` from ``start_step`` on, images as float32."""
    order = epoch_permutation(len(images), seed, epoch)
    for step in range(start_step, steps_per_epoch(len(images), batch_size)):
        idx = np.sort(order[step * batch_size:(step + 1) * batch_size])
        yield {"image": to_float(images[idx]), "label": labels[idx]}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[dict]:
    """Yields batches covering every example once; the last is padded, with ``mask`` 0 there."""
    for start in range(0, len(images), batch_size):
        image = to_float(images[start:start + batch_size])
        label = labels[start:start + batch_size]
        mask = np.ones(len(image), np.float32)
        pad = batch_size - len(image)
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        yield {"image": image, "label": label, "mask": mask}
