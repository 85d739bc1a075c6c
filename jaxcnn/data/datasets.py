"""Loading TFDS datasets by name into memory, with the spec a model and a config need.

Any registered TFDS image-classification dataset (``image`` and ``label`` features) loads by
name where the machine can reach its source; jaxcnn's own builders (the offline ``digits``)
register themselves on import of :mod:`jaxcnn.data`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxcnn.data import digits as _digits  # noqa: F401  (registers the 'digits' builder)
from jaxcnn.errors import DataError, UnknownNameError

OFFLINE_DATASETS = ("digits",)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and a config need to know of a dataset, read from its TFDS info."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict

    def split_size(self, split: str) -> int:
        if split not in self.split_sizes:
            raise DataError(f"dataset {self.name!r} has no split {split!r}; "
                            f"its splits: {', '.join(sorted(self.split_sizes))}")
        return self.split_sizes[split]


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


def prepared_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The builder of ``name`` with its data prepared (downloaded, or built offline)."""
    builder = get_builder(name, data_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as err:  # TFDS raises many kinds; none is actionable as it stands
            raise DataError(f"could not prepare dataset {name!r} in {builder.data_dir}: "
                            f"{err}") from err
    return builder


def dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """Returns the :class:`DatasetSpec` of ``name``, preparing the dataset if it is not yet."""
    info = prepared_builder(name, data_dir).info
    features = info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"dataset {name!r} is not an image-classification dataset: it has no "
                        f"'image' and 'label' features (it has {', '.join(features.keys())})")
    label = features["label"]
    return DatasetSpec(
        name=name,
        image_shape=tuple(features["image"].shape),
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        split_sizes={k: v.num_examples for k, v in info.splits.items()},
    )


def load_split(name: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split into memory as ``(images uint8 NHWC, labels int32)``."""
    builder = prepared_builder(name, data_dir)
    if split not in builder.info.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; "
                        f"its splits: {', '.join(sorted(builder.info.splits.keys()))}")
    data = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
    images, labels = tfds.as_numpy(data)
    return np.asarray(images, np.uint8), np.asarray(labels, np.int32)


def _expand(path: str | None) -> str | None:
    return os.path.abspath(os.path.expanduser(path)) if path else None
