"""TFDS datasets by name: preparing them (online, or offline from a manual dir), their spec, and
whole splits in memory.

Any TFDS image-classification dataset (``image`` and ``label`` features) loads by name where
the machine can reach its source. Without a network:

- ``digits`` (jaxcnn's own builder) needs nothing;
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` are built from the original files in a
  manual dir (:mod:`jaxcnn.data.offline`), the one passed or TFDS's default
  ``<data_dir>/downloads/manual``;
- ``imagenet2012`` and other manual-download builders take TFDS's own manual dir
  (``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` for ImageNet).

Once prepared in ``data_dir`` a dataset is read by TFDS's registered builder, exactly as
``tfds.load(name, data_dir=data_dir)`` reads it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import socket

import numpy as np
import tensorflow_datasets as tfds

from jaxcnn.data import digits as _digits  # noqa: F401  (registers the 'digits' builder)
from jaxcnn.data import files as _files
from jaxcnn.data import stats as _stats
from jaxcnn.data.offline import OFFLINE_BUILDERS, offline_builder
from jaxcnn.errors import DataError, InputShapeError, JaxCNNError, UnknownNameError

OFFLINE_DATASETS = ("digits", *OFFLINE_BUILDERS)
DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                  "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                  "cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and a config need to know of a dataset, read from its TFDS info.

    ``mean``/``std`` are per-channel statistics of the training split on [0, 1] (published or
    computed, as ``stats_source`` says); ``image_shape`` has ``None`` sides for datasets whose
    images vary in size (ImageNet), see :meth:`input_shape`.
    """

    name: str
    image_shape: tuple
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    stats_source: str = ""
    version: str = ""

    def split_size(self, split: str) -> int:
        """Examples in ``split``: a split's name or a TFDS slice of it (``"train[:4000]"``)."""
        if split in self.split_sizes:
            return self.split_sizes[split]
        return sliced_size(self.name, self.split_sizes, split)

    @property
    def fixed_shape(self) -> bool:
        """Whether every image has the same, known shape (so the split fits an array)."""
        return all(d is not None for d in self.image_shape)

    def input_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """The ``(H, W, C)`` of the images batches carry: the stored shape, or square crops of
        ``image_size`` (224 by default) where the dataset's images vary in size."""
        if image_size is None and self.fixed_shape:
            return tuple(self.image_shape)
        return (image_size or 224, image_size or 224, self.image_shape[-1])

    def split_bytes(self, split: str) -> float:
        """Bytes of ``split`` as uint8 arrays (``inf`` where the shape varies)."""
        if not self.fixed_shape:
            return math.inf
        return float(self.split_size(split) * math.prod(self.image_shape))


class _Size:
    def __init__(self, num_examples: int):
        self.num_examples = num_examples


def sliced_size(name: str, split_sizes: dict, split: str) -> int:
    """Examples in a TFDS split expression such as ``"train[:4000]"``, ``"test[:50%]"`` or
    ``"train+test"`` (the TFDS slicing API); raises :class:`DataError` naming the splits."""
    try:
        parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(
            {k: _Size(v) for k, v in split_sizes.items()})
    except (ValueError, KeyError, AssertionError, TypeError):
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits: "
                        f"{', '.join(sorted(split_sizes))}, or a TFDS slice of them such as "
                        "'train[:4000]' or 'test[:50%]'") from None
    size = sum(max(0, (p.to if p.to is not None else split_sizes[p.splitname]) - (p.from_ or 0))
               for p in parts)
    if size == 0:
        raise DataError(f"split {split!r} of dataset {name!r} holds no example; choose a "
                        "non-empty slice")
    return size


def tensorflow_on_cpu():
    """Imports TensorFlow with every GPU hidden from it (TFDS reads data with it; it must not
    take the accelerators' memory); returns the module."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices: it can no longer be changed
        pass
    return tf


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of ``name``; unknown names raise with the offline ones listed."""
    try:
        return tfds.builder(name, data_dir=_expand(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise UnknownNameError(
            f"unknown dataset {name!r}: TFDS has no builder of that name; offline datasets: "
            f"{', '.join(OFFLINE_DATASETS)}; otherwise any TFDS image-classification dataset "
            "(tfds.list_builders() lists them)"
        ) from None


def default_manual_dir(builder: tfds.core.DatasetBuilder) -> str:
    """TFDS's default manual dir for ``builder``: ``<data_dir root>/downloads/manual``."""
    return os.path.join(builder.data_dir_root, "downloads", "manual")


def prepared_builder(name: str, data_dir: str | None = None,
                     manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The builder of ``name`` with its data prepared (read, built offline, or downloaded)."""
    builder = get_builder(name, data_dir)
    tensorflow_on_cpu()
    if builder.is_prepared():
        return builder
    if builder.name in OFFLINE_BUILDERS and ":" not in name and "/" not in name:
        manual = manual_dir or default_manual_dir(builder)
        if manual_dir or _has_files(builder.name, manual):
            _files.locate(builder.name, manual)  # a missing file fails here, before TFDS starts
            _prepare(offline_builder(builder.name, data_dir, manual), name)
            return get_builder(name, data_dir)
        host = DOWNLOAD_HOSTS[builder.name]
        if not _resolves(host):
            wanted = " or ".join(", ".join(f.name for f in files) for files in
                                 _files.MANUAL_SOURCES[builder.name].variants)
            raise DataError(
                f"dataset {name!r} is not prepared in {builder.data_dir_root} and cannot be "
                f"downloaded ({host} is unreachable): pass manual_dir (--manual-dir) naming a "
                f"folder that holds the original files {wanted} "
                f"from {_files.MANUAL_SOURCES[builder.name].homepage}")
    config = tfds.download.DownloadConfig(manual_dir=_expand(manual_dir)) if manual_dir else None
    _prepare(builder, name, config)
    return builder


def _prepare(builder, name: str, download_config=None) -> None:
    try:
        builder.download_and_prepare(download_config=download_config)
    except JaxCNNError:
        raise
    except Exception as err:  # TFDS raises many kinds; none is actionable as it stands
        hint = ""
        instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
        if instructions and " ".join(instructions.split()) not in " ".join(str(err).split()):
            hint = (f"; {name!r} needs files downloaded by hand into the manual dir (pass "
                    f"manual_dir / --manual-dir): {' '.join(instructions.split())}")
        raise DataError(f"could not prepare dataset {name!r} in {builder.data_dir}: "
                        f"{type(err).__name__}: {' '.join(str(err).split())}{hint}") from err


def _has_files(name: str, manual_dir: str) -> bool:
    try:
        _files.locate(name, manual_dir)
        return True
    except DataError:
        return False


def _resolves(host: str, timeout: float = 5.0) -> bool:
    """Whether ``host`` resolves within ``timeout`` seconds (a cheap no-network check)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout)
        return True
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


_STATS_CACHE: dict = {}


def channel_stats(builder: tfds.core.DatasetBuilder) -> _stats.ChannelStats:
    """Published statistics of the dataset, else computed over its training split (cached)."""
    if builder.name in _stats.PUBLISHED:
        return _stats.ChannelStats(*_stats.PUBLISHED[builder.name])
    key = (builder.name, str(builder.data_dir))
    if key not in _STATS_CACHE:
        split = "train" if "train" in builder.info.splits else next(iter(builder.info.splits))
        data = builder.as_dataset(split=split, shuffle_files=False)
        images = (example["image"] for example in tfds.as_numpy(data))
        _STATS_CACHE[key] = _stats.stats_from_stream(images)
    return _STATS_CACHE[key]


def dataset_spec(name: str, data_dir: str | None = None,
                 manual_dir: str | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``, preparing the dataset if it is not yet."""
    builder = prepared_builder(name, data_dir, manual_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"dataset {name!r} is not an image-classification dataset: it has no "
                        f"'image' and 'label' features (it has {', '.join(features.keys())})")
    label = features["label"]
    stats = channel_stats(builder)
    return DatasetSpec(
        name=name,
        image_shape=tuple(features["image"].shape),
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        split_sizes={k: v.num_examples for k, v in builder.info.splits.items()},
        mean=stats.mean, std=stats.std, stats_source=stats.source,
        version=str(builder.version),
    )


def load_split(name: str, split: str, data_dir: str | None = None,
               manual_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split into memory as ``(images uint8 NHWC, labels int32)``."""
    builder = prepared_builder(name, data_dir, manual_dir)
    if split not in builder.info.splits:
        sliced_size(name, {k: v.num_examples for k, v in builder.info.splits.items()}, split)
    shape = tuple(builder.info.features["image"].shape)
    if None in shape:
        raise InputShapeError(
            f"dataset {name!r} has images of varying shape {shape}: a split cannot be held as "
            "one array; stream it instead (make_pipeline(..., mode='stream', "
            "preprocess='imagenet') crops every image to one size)")
    data = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(data)
    return np.asarray(images, np.uint8), np.asarray(labels, np.int32)


def _expand(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None
