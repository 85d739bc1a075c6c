"""``make_pipeline``: a dataset name in, an input pipeline out, the mode chosen by size.

Three pipelines implement :class:`jaxcnn.data.interface.Pipeline`:

- ``"memory"`` (:class:`DeviceDataset`): the splits held on the device(s) as uint8, shuffled,
  augmented and normalised inside jit; chosen when the dataset's images have one fixed shape
  and the training plus evaluation splits take at most ``memory_limit`` bytes (2 GiB by
  default: MNIST 55 MB, CIFAR 184 MB);
- ``"stream"`` (:class:`StreamingDataset`): tf.data from TFDS, per host; chosen otherwise
  (ImageNet, imagenette: images of many sizes, gigabytes);
- ``"host"`` (:class:`HostDataset`): numpy batches on the CPU, never chosen by ``"auto"``;
  the reference to check the others against.
"""
from __future__ import annotations

import jax

from jaxcnn.data import sharding
from jaxcnn.data.augment import parse_augment
from jaxcnn.data.batches import steps_per_epoch
from jaxcnn.data.datasets import DatasetSpec, dataset_spec, load_split, prepared_builder
from jaxcnn.data.device import DeviceDataset
from jaxcnn.data.host import HostDataset
from jaxcnn.data.interface import Pipeline
from jaxcnn.data.preprocess import PREPROCESSORS, make_preprocess
from jaxcnn.data.stats import pixel_stats
from jaxcnn.data.streaming import StreamingDataset
from jaxcnn.errors import DataError, InputShapeError, unknown

MODES = ("auto", "memory", "stream", "host")
MEMORY_LIMIT = 2 << 30


def choose_mode(spec: DatasetSpec, eval_splits=("test",), train_split: str = "train",
                memory_limit: float = MEMORY_LIMIT) -> str:
    """``"memory"`` when the splits have a fixed shape and fit ``memory_limit`` bytes, else
    ``"stream"``."""
    splits = [train_split, *(s for s in eval_splits if s in spec.split_sizes)]
    total = sum(spec.split_bytes(s) for s in splits)
    return "memory" if total <= memory_limit else "stream"


def make_pipeline(name: str, *, batch_size: int, eval_batch_size: int | None = None,
                  seed: int = 0, data_dir: str | None = None, manual_dir: str | None = None,
                  preprocess: str = "auto", augment: str | None = None,
                  image_size: int | None = None, mode: str = "auto", mesh=None,
                  data_axis: str = sharding.DATA_AXIS, train_split: str = "train",
                  eval_splits=("test",), memory_limit: float = MEMORY_LIMIT,
                  shuffle_buffer: int | None = None) -> Pipeline:
    """The input pipeline of dataset ``name`` (prepared first if it is not yet).

    Args:
      name: a TFDS name (``mnist``, ``cifar10``, ``imagenet2012``, ...) or ``digits``.
      batch_size, eval_batch_size: global batch sizes (all hosts together).
      seed: fixes the order and augmentation of every epoch.
      data_dir, manual_dir: TFDS data dir; folder of the original files for an offline build.
      preprocess: ``"unit"``, ``"centered"``, ``"per_pixel"``, ``"per_channel"`` or
        ``"imagenet"`` (:mod:`jaxcnn.data.preprocess`); ``"auto"``: ``"imagenet"`` for images
        of varying size, else ``"unit"``. ``image_size`` is the imagenet crop (224).
      augment: a spec like ``"crop:4,flip"`` (:mod:`jaxcnn.data.augment`), or None.
      mode: ``"auto"``, ``"memory"``, ``"stream"`` or ``"host"``.
      mesh, data_axis: batches become global arrays sharded over this mesh axis. ``None``: the
        default device on one process; on several processes a 1-D mesh over all devices.
      eval_splits: the splits ``mode="auto"`` counts for the size (any split can be evaluated).
      memory_limit: bytes of uint8 data above which ``"auto"`` streams.
      shuffle_buffer: examples in the streaming shuffle buffer.
    """
    if mode not in MODES:
        raise unknown("input mode", mode, MODES)
    if preprocess not in (*PREPROCESSORS, "auto"):
        raise unknown("preprocessing", preprocess, (*PREPROCESSORS, "auto"))
    augment = parse_augment(augment)
    spec = dataset_spec(name, data_dir, manual_dir)
    spec.split_size(train_split)
    if preprocess == "auto":
        preprocess = "unit" if spec.fixed_shape else "imagenet"
    if mode == "auto":
        mode = choose_mode(spec, eval_splits, train_split, memory_limit)
    if mode != "stream" and not spec.fixed_shape:
        raise InputShapeError(
            f"dataset {name!r} has images of varying shape {spec.image_shape}; mode={mode!r} "
            "holds splits as arrays: use mode='stream' with preprocess='imagenet'")
    if mesh is None and jax.process_count() > 1:
        mesh = sharding.data_mesh(axis=data_axis)
    common = dict(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                  mesh=mesh, data_axis=data_axis, train_split=train_split)
    if mode == "stream":
        pre = make_preprocess(preprocess, spec.image_shape, mean=spec.mean, std=spec.std,
                              image_size=image_size)
        builder = prepared_builder(name, data_dir, manual_dir)
        extra = {} if shuffle_buffer is None else {"shuffle_buffer": shuffle_buffer}
        return StreamingDataset(spec, builder, pre, augment, **common, **extra)

    # Fail on cheap checks before reading the split.
    pipeline_batch_check(spec, batch_size, train_split)
    train = load_split(name, train_split, data_dir, manual_dir)
    pixel_mean = pixel_std = None
    if preprocess == "per_pixel":
        pixel_mean, pixel_std = pixel_stats(train[0])
    pre = make_preprocess(preprocess, spec.image_shape, mean=spec.mean, std=spec.std,
                          pixel_mean=pixel_mean, pixel_std=pixel_std, image_size=image_size)
    load = lambda split: load_split(name, split, data_dir, manual_dir)  # noqa: E731
    cls = DeviceDataset if mode == "memory" else HostDataset
    return cls(spec, train, pre, augment, load=load, **common)


def pipeline_batch_check(spec: DatasetSpec, batch_size: int, split: str = "train") -> None:
    """Raises the pipelines' error for a batch larger than ``split``, before any reading."""
    if isinstance(batch_size, int) and batch_size > 0:
        try:
            steps_per_epoch(spec.split_size(split), batch_size)
        except DataError as err:
            raise DataError(f"dataset {spec.name!r}: {err}") from None


def check_image_shape(dataset: str, got, want, consumer: str = "the model") -> None:
    """Raises :class:`InputShapeError` unless ``got`` (H, W, C) fits ``want`` (``None`` = any)."""
    got, want = tuple(got), tuple(want)
    fits = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))
    if not fits:
        raise InputShapeError(f"dataset {dataset!r} gives images of shape {got} but {consumer} "
                              f"takes {want}; choose a dataset or preprocessing (image_size) "
                              "that gives that shape, or a model for this one")
