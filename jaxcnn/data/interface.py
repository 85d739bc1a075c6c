"""The interface every input pipeline implements, and the randomness they share.

A fit loop needs only::

    for batch in pipeline.train_batches(epoch, start_step):   # {"image", "label"}
        ...
    for batch in pipeline.eval_batches("test"):                # {"image", "label", "mask"}
        ...

``image`` is float32 NHWC, preprocessed (:mod:`jaxcnn.data.preprocess`) and, in training,
augmented (:mod:`jaxcnn.data.augment`); ``label`` int32; ``mask`` float32, 0 on the padding of
the last evaluation batch. With a mesh the arrays are global ``jax.Array``s sharded over its
``data`` axis. The position in the training stream is ``(epoch, step)``: batches of an epoch
depend on ``(seed, epoch)`` only, so resuming at ``(epoch, start_step)`` continues exactly.

Randomness (all derived from ``jax.random.key(seed)``):

- the order of epoch ``e``: ``permutation(fold_in(fold_in(key, SHUFFLE), e), N)``;
- example ``i`` of step ``s`` of epoch ``e``: ``split(fold_in(fold_in(fold_in(key, AUGMENT),
  e), s), batch_size)[i]``, first split in two, for the geometry (random-resized crop) and the
  augmentations. ``i`` is the position in the *global* batch, so the keys do not depend on the
  number of hosts.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Iterator

import jax
import jax.numpy as jnp

from jaxcnn.data.augment import Augment
from jaxcnn.data.batches import steps_per_epoch
from jaxcnn.data.datasets import DatasetSpec
from jaxcnn.data.preprocess import Preprocess, to_unit
from jaxcnn.data import sharding
from jaxcnn.errors import ConfigError, DataError

SHUFFLE, AUGMENT = 0, 1


def epoch_key(seed: int, stream: int, epoch) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), epoch)


def example_keys(seed: int, epoch, step, batch_size: int) -> jax.Array:
    """The per-example keys of step ``step`` of ``epoch`` (traceable in ``epoch``/``step``)."""
    return jax.random.split(jax.random.fold_in(epoch_key(seed, AUGMENT, epoch), step), batch_size)


def device_permutation(seed: int, epoch, num_examples: int) -> jax.Array:
    """The order of the examples in ``epoch``, computed by JAX (on the device)."""
    return jax.random.permutation(epoch_key(seed, SHUFFLE, epoch), num_examples)


class Pipeline:
    """Base of the input pipelines: the common attributes and checks.

    Attributes: ``mode`` (``"memory"``, ``"stream"``, ``"host"``), ``spec``, ``preprocess``,
    ``augment``, ``batch_size`` and ``eval_batch_size`` (global), ``seed``, ``mesh``,
    ``steps_per_epoch`` (full batches; the last partial one is dropped), ``input_shape``.
    """

    mode = "abstract"

    def __init__(self, spec: DatasetSpec, preprocess: Preprocess, augment: Augment, *,
                 batch_size: int, eval_batch_size: int | None, seed: int, num_train: int,
                 mesh=None, data_axis: str = sharding.DATA_AXIS, train_split: str = "train"):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        eval_batch_size = eval_batch_size or batch_size
        if not isinstance(eval_batch_size, int) or eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive integer, "
                              f"got {eval_batch_size!r}")
        if not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        sharding.check_divisible(batch_size, mesh, data_axis, "batch size")
        sharding.check_divisible(eval_batch_size, mesh, data_axis, "eval batch size")
        self.spec, self.preprocess, self.augment = spec, preprocess, augment
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, int(seed)
        self.mesh, self.data_axis, self.train_split = mesh, data_axis, train_split
        try:
            self.steps_per_epoch = steps_per_epoch(num_train, batch_size)
        except DataError as err:
            raise DataError(f"dataset {spec.name!r}: {err}") from None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The ``(H, W, C)`` of the images in the batches (what a model is initialised with)."""
        return tuple(self.preprocess.output_shape)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Batches ``start_step, ..., steps_per_epoch - 1`` of ``epoch``:
        ``{"image": float32 NHWC, "label": int32}``."""
        raise NotImplementedError

    def eval_batches(self, split: str = "test") -> Iterator[dict]:
        """Every example of ``split`` once, in :meth:`num_eval_batches` batches of
        ``eval_batch_size``; the last is padded, ``mask`` 0 (and image/label 0) there."""
        raise NotImplementedError

    def num_examples(self, split: str) -> int:
        return self.spec.split_size(split)

    def num_eval_batches(self, split: str = "test") -> int:
        return -(-self.num_examples(split) // self.eval_batch_size)

    def _check_start(self, start_step: int) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ConfigError(f"start_step {start_step} is outside the epoch's "
                              f"{self.steps_per_epoch} steps")

    def _jit(self, fn, replicated: bool = False):
        """The jitted ``fn`` (shared by every pipeline: one compilation per recipe), its
        outputs sharded over the mesh's data axis (or replicated)."""
        if self.mesh is None:
            return jitted(fn, None)
        return jitted(fn, sharding.replicated(self.mesh) if replicated
                      else sharding.batch_sharding(self.mesh, self.data_axis))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a jitted batch function computes beyond its array arguments; hashable, it is the
    static argument ``static`` of the jitted functions, so equal recipes share a compilation.

    ``rows`` picks this process's rows of the per-example keys when the batch is
    process-local (no mesh): ``(first, count)``.
    """

    preprocess: Preprocess
    augment: Augment
    batch_size: int
    geometry: bool = True
    rows: tuple[int, int] | None = None


@functools.lru_cache(maxsize=None)
def jitted(fn, out_sharding):
    """``jax.jit(fn)`` with ``static`` static and the given output sharding, made once."""
    if out_sharding is None:
        return jax.jit(fn, static_argnames=("static",))
    return jax.jit(fn, static_argnames=("static",), out_shardings=out_sharding)


def train_transform(recipe: Recipe, seed, epoch, step, images: jax.Array) -> jax.Array:
    """uint8 images -> preprocessed, augmented float32 images of step ``step`` of ``epoch``."""
    preprocess, augment = recipe.preprocess, recipe.augment
    keys = example_keys(seed, epoch, step, recipe.batch_size)
    if recipe.rows is not None:
        keys = keys[recipe.rows[0]:recipe.rows[0] + recipe.rows[1]]

    def one(key, image):
        k_geometry, k_augment = jax.random.split(key)
        image = to_unit(image)
        if recipe.geometry:
            image = preprocess.train_geometry(k_geometry, image)
        return preprocess.normalise(augment(k_augment, image))

    return jax.vmap(one)(keys, images)


def eval_transform(recipe: Recipe, images: jax.Array) -> jax.Array:
    """uint8 images -> preprocessed float32 images (evaluation geometry, no augmentation)."""
    preprocess = recipe.preprocess

    def one(image):
        image = to_unit(image)
        if recipe.geometry:
            image = preprocess.eval_geometry(image)
        return preprocess.normalise(image)

    return jax.vmap(one)(images)


def masked(batch: dict, valid: jax.Array) -> dict:
    """Zeroes the padded rows (``valid`` false) and adds the float32 ``mask``."""
    shape = (-1,) + (1,) * (batch["image"].ndim - 1)
    return {"image": jnp.where(valid.reshape(shape), batch["image"], 0.0),
            "label": jnp.where(valid, batch["label"], 0),
            "mask": valid.astype(jnp.float32)}
