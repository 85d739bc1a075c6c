"""The in-memory pipeline: a whole dataset in device memory, batches cut by jitted gathers.

For datasets that fit (MNIST, Fashion-MNIST, CIFAR, digits: tens to hundreds of MB as uint8),
the images are read once and kept on the device(s) as uint8. Each epoch's order is a JAX
permutation of ``(seed, epoch)``; each step is one jitted call that slices the order, gathers
the examples, and converts, crops, augments and normalises them with ``vmap`` over per-example
keys (:mod:`jaxcnn.data.interface`). Nothing but two integers crosses from the host per step.

With a mesh, the data is replicated on every device and the batch comes out sharded over the
``data`` axis: each device computes only its rows. Every process holds the whole (small)
dataset, so the global batch of ``(seed, epoch, step)`` is the same on any number of hosts;
each process feeds the rows of it that its devices hold (:func:`jaxcnn.data.sharding.local_rows`).
"""
from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.data import sharding
from jaxcnn.data.augment import Augment
from jaxcnn.data.datasets import DatasetSpec
from jaxcnn.data.interface import (Pipeline, Recipe, device_permutation, eval_transform, masked,
                                   train_transform)
from jaxcnn.data.preprocess import Preprocess
from jaxcnn.errors import DataError, InputShapeError

Loader = Callable[[str], tuple[np.ndarray, np.ndarray]]


class DeviceDataset(Pipeline):
    """In-memory pipeline over uint8 splits held on the device(s).

    Args:
      spec: the dataset's :class:`DatasetSpec`.
      train: ``(images uint8 NHWC, labels)`` of the training split.
      preprocess, augment: see :func:`jaxcnn.data.make_pipeline`.
      load: ``split -> (images, labels)``, called once per evaluation split on first use.
      batch_size, eval_batch_size: global batch sizes.
      seed: fixes the order and the augmentation of every epoch.
      mesh, data_axis: shard batches over this axis of this mesh (``None``: default device).
    """

    mode = "memory"

    def __init__(self, spec: DatasetSpec, train: tuple[np.ndarray, np.ndarray],
                 preprocess: Preprocess, augment: Augment, *, load: Loader | None = None,
                 batch_size: int, eval_batch_size: int | None = None, seed: int = 0,
                 mesh=None, data_axis: str = sharding.DATA_AXIS, train_split: str = "train"):
        images, labels = _checked(spec.name, train_split, *train)
        if preprocess.crop_size is None and images.shape[1:] != tuple(preprocess.output_shape):
            raise InputShapeError(f"dataset {spec.name!r} has images of shape {images.shape[1:]}"
                                  f" but the preprocessing was made for {preprocess.output_shape}")
        super().__init__(spec, preprocess, augment, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, seed=seed, num_train=len(images),
                         mesh=mesh, data_axis=data_axis, train_split=train_split)
        self._load = load
        self._splits = {train_split: self._put(images, labels)}
        self._num = {train_split: len(images)}
        self._orders: dict[int, jax.Array] = {}
        self._seed = jnp.uint32(self.seed)
        self._train = Recipe(preprocess, augment, self.batch_size)
        self._eval = Recipe(preprocess, augment, self.eval_batch_size)
        self._train_fn = self._jit(_train_batch)
        self._eval_fn = self._jit(_eval_batch)
        self._order_fn = self._jit(_order, replicated=True)

    def _put(self, images: np.ndarray, labels: np.ndarray):
        return (sharding.replicate(np.ascontiguousarray(images), self.mesh),
                sharding.replicate(np.asarray(labels, np.int32), self.mesh))

    def num_examples(self, split: str) -> int:
        if split in self._num:
            return self._num[split]
        return super().num_examples(split)

    def epoch_order(self, epoch: int) -> jax.Array:
        """The permutation of the training split for ``epoch`` (cached for the last epoch)."""
        if epoch not in self._orders:
            num = self._num[self.train_split]
            self._orders = {epoch: self._order_fn(self._seed, jnp.int32(epoch), static=num)}
        return self._orders[epoch]

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Batches ``start_step ..`` of ``epoch``: ``{"image": float32 NHWC, "label": int32}``."""
        self._check_start(start_step)
        images, labels = self._splits[self.train_split]
        order = self.epoch_order(epoch)
        epoch_ = jnp.int32(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield self._train_fn(images, labels, order, self._seed, epoch_, jnp.int32(step),
                                 static=self._train)

    def eval_batches(self, split: str = "test") -> Iterator[dict]:
        """Every example of ``split`` once; the last batch padded, ``mask`` 0 on the padding."""
        images, labels = self._split(split)
        for batch in range(self.num_eval_batches(split)):
            yield self._eval_fn(images, labels, jnp.int32(batch), static=self._eval)

    def _split(self, split: str):
        if split not in self._splits:
            if self._load is None:
                raise DataError(f"dataset {self.spec.name!r}: split {split!r} was not loaded")
            images, labels = _checked(self.spec.name, split, *self._load(split))
            self._splits[split] = self._put(images, labels)
            self._num[split] = len(images)
        return self._splits[split]


def _order(seed, epoch, *, static: int):
    return device_permutation(seed, epoch, static)


def _train_batch(images, labels, order, seed, epoch, step, *, static: Recipe):
    """Step ``step`` of ``epoch``: slice the order, gather, transform (one jitted call)."""
    index = jax.lax.dynamic_slice_in_dim(order, step * static.batch_size, static.batch_size)
    image = train_transform(static, seed, epoch, step, images[index])
    return {"image": image, "label": labels[index]}


def _eval_batch(images, labels, batch, *, static: Recipe):
    """Evaluation batch ``batch``: rows past the split's end are padding (mask 0)."""
    size, count = static.batch_size, images.shape[0]
    index = batch * size + jnp.arange(size)
    valid = index < count
    index = jnp.minimum(index, count - 1)
    return masked({"image": eval_transform(static, images[index]), "label": labels[index]}, valid)


def _checked(name: str, split: str, images: np.ndarray, labels: np.ndarray):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise InputShapeError(f"dataset {name!r} split {split!r}: expected uint8 (N, H, W, C) "
                              f"images, got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"dataset {name!r} split {split!r}: {len(images)} images but labels of "
                        f"shape {labels.shape}")
    if len(images) == 0:
        raise DataError(f"dataset {name!r} split {split!r} is empty")
    return images, labels
