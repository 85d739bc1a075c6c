"""The host pipeline: numpy batches cut on the CPU (:mod:`jaxcnn.data.batches`), per host.

The reference the other pipelines are checked against, and the simplest to debug: the order
of an epoch is numpy's permutation of ``(seed, epoch)`` (:func:`batches.epoch_permutation`),
each global batch's indices are sorted (for locality, as :func:`batches.train_batches` does),
and each process converts only its rows of the global batch and hands them to
:func:`jaxcnn.data.sharding.to_global`. No augmentation and no geometry (those run on the
device, in the in-memory and streaming pipelines).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from jaxcnn.data import sharding
from jaxcnn.data.augment import Augment
from jaxcnn.data.batches import epoch_permutation, to_float
from jaxcnn.data.datasets import DatasetSpec
from jaxcnn.data.device import _checked
from jaxcnn.data.interface import Pipeline
from jaxcnn.data.preprocess import Preprocess
from jaxcnn.errors import ConfigError


class HostDataset(Pipeline):
    """Numpy batches from in-memory uint8 splits; arguments as :class:`DeviceDataset`'s."""

    mode = "host"

    def __init__(self, spec: DatasetSpec, train: tuple[np.ndarray, np.ndarray],
                 preprocess: Preprocess, augment: Augment, *,
                 load: Callable | None = None, batch_size: int,
                 eval_batch_size: int | None = None, seed: int = 0, mesh=None,
                 data_axis: str = sharding.DATA_AXIS, train_split: str = "train"):
        if augment or preprocess.crop_size is not None:
            raise ConfigError("the host pipeline (mode='host') neither augments nor crops; use "
                              "mode='memory' for augment=... or preprocess='imagenet'")
        images, labels = _checked(spec.name, train_split, *train)
        super().__init__(spec, preprocess, augment, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, seed=seed, num_train=len(images),
                         mesh=mesh, data_axis=data_axis, train_split=train_split)
        self._load = load
        self._splits = {train_split: (images, np.asarray(labels, np.int32))}
        self._mean = np.asarray(preprocess.mean, np.float32)
        self._std = np.asarray(preprocess.std, np.float32)

    def num_examples(self, split: str) -> int:
        if split in self._splits:
            return len(self._splits[split][0])
        return super().num_examples(split)

    def _finish(self, batch: dict, valid: np.ndarray | None = None) -> dict:
        image = batch["image"]
        if self.preprocess.name != "unit":
            image = (image - self._mean) / self._std
        if valid is not None:  # padded rows: zeros, mask 0
            image = np.where(valid[:, None, None, None], image, 0.0)
            batch["label"] = np.where(valid, batch["label"], 0).astype(np.int32)
            batch["mask"] = valid.astype(np.float32)
        batch["image"] = image.astype(np.float32, copy=False)
        if self.mesh is None:
            return batch
        return sharding.to_global(batch, self.mesh, self.data_axis)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        self._check_start(start_step)
        images, labels = self._splits[self.train_split]
        order = epoch_permutation(len(images), self.seed, epoch)
        rows = sharding.local_rows(self.batch_size, self.mesh, self.data_axis)
        for step in range(start_step, self.steps_per_epoch):
            index = np.sort(order[step * self.batch_size:(step + 1) * self.batch_size])[rows]
            yield self._finish({"image": to_float(images[index]), "label": labels[index]})

    def eval_batches(self, split: str = "test") -> Iterator[dict]:
        if split not in self._splits:
            images, labels = _checked(self.spec.name, split, *self._load(split))
            self._splits[split] = (images, np.asarray(labels, np.int32))
        images, labels = self._splits[split]
        rows = sharding.local_rows(self.eval_batch_size, self.mesh, self.data_axis)
        for batch in range(self.num_eval_batches(split)):
            index = batch * self.eval_batch_size + np.arange(self.eval_batch_size)[rows]
            valid = index < len(images)
            index = np.minimum(index, len(images) - 1)
            yield self._finish({"image": to_float(images[index]), "label": labels[index]}, valid)
