"""TFDS's own MNIST, Fashion-MNIST and CIFAR builders, fed from a user's original files.

Each builder here subclasses the TFDS builder of the same dataset (so it has the same name,
version, features, splits and example keys) with ``skip_registration=True`` (so TFDS's own
stays the registered one), and replaces only ``_split_generators``: instead of downloading, it
reads the original distribution files from a manual dir, checks their size and checksums
(:mod:`jaxcnn.data.files`) and parses them (:mod:`jaxcnn.data.formats`). The prepared dataset
lands where TFDS's would (``data_dir/mnist/3.0.1``), so afterwards plain
``tfds.load('mnist', data_dir=data_dir)`` reads it, with no network.

The records are those TFDS's builders write: the same example keys (the index in the
original file order, which fixes the order TFDS reads them back in), ``label`` (and for
CIFAR ``id`` = ``train_00000``..., and CIFAR-100's ``coarse_label``), class names for CIFAR
read from the archive's label files as TFDS does. Images are PNG-encoded by
:func:`jaxcnn.data.png.encode_png` (lossless; same pixels, other bytes than TF's encoder).
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from jaxcnn.data import files as _files
from jaxcnn.data import formats
from jaxcnn.data.png import encode_png
from jaxcnn.errors import DataError

MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MNIST_SIZES = {"train": 60000, "test": 10000}


class _ManualDirMixin:
    """Holds the manual dir; the files are located and verified when generation starts."""

    def __init__(self, *, manual_dir: str | None = None, **kwargs):
        self._jaxcnn_manual_dir = manual_dir
        super().__init__(**kwargs)

    def _verified_files(self) -> tuple[str, dict[str, str]]:
        if not self._jaxcnn_manual_dir:
            raise DataError(f"dataset {self.name!r}: no manual dir was given to build it from")
        return _files.locate_and_verify(self.name, self._jaxcnn_manual_dir)


class _MnistStyle(_ManualDirMixin):
    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the files are in the manual dir
        _, paths = self._verified_files()
        splits = {}
        for split, (images_name, labels_name) in MNIST_FILES.items():
            images, labels = formats.read_idx_pair(paths[images_name], paths[labels_name])
            if len(images) != MNIST_SIZES[split] or images.shape[1:] != (28, 28, 1):
                raise DataError(f"{paths[images_name]} holds {images.shape}, expected "
                                f"({MNIST_SIZES[split]}, 28, 28, 1)")
            splits[split] = self._examples(images, labels)
        return splits

    def _examples(self, images, labels):
        # Keys are the indices in file order, as TFDS's MNIST builder uses.
        for index in range(len(images)):
            yield index, {"image": encode_png(images[index]), "label": int(labels[index])}


class OfflineMNIST(_MnistStyle, tfds.image_classification.MNIST, skip_registration=True):
    """MNIST (TFDS ``mnist``) from the four original IDX ``.gz`` files in a manual dir."""

    name = "mnist"


class OfflineFashionMNIST(_MnistStyle, tfds.image_classification.FashionMNIST,
                          skip_registration=True):
    """Fashion-MNIST (TFDS ``fashion_mnist``) from its four original IDX ``.gz`` files."""

    name = "fashion_mnist"


class _CifarStyle(_ManualDirMixin):
    """Reads ``cifar-10[0]-binary.tar.gz`` (what TFDS downloads) or the python version."""

    LAYOUT: dict = {}

    def _split_generators(self, dl_manager):
        del dl_manager
        variant, paths = self._verified_files()
        layout = self.LAYOUT[variant]
        archive = formats.CifarArchive(paths[layout["archive"]], variant, layout["folder"])
        # TFDS's own keys: ("label",), or ("coarse_label", "label") for CIFAR-100
        label_keys = self._cifar_info.label_keys
        for key, names in zip(label_keys, layout["names"]):
            self.info.features[key].names = archive.names(*names)
        return {split: self._examples(archive, split, members, label_keys)
                for split, members in (("train", layout["train"]), ("test", layout["test"]))}

    def _examples(self, archive, split, members, label_keys):
        index = 0
        for member in members:
            if archive.kind == "binary":
                images, labels = archive.binary_batch(member, len(label_keys))
            else:
                images, labels = archive.python_batch(member, self.LAYOUT["python"]["keys"])
            for image, label in zip(images, labels):
                record = {key: int(value) for key, value in zip(label_keys, label)}
                record["id"] = f"{split}_{index:05d}"  # the id TFDS's builder writes
                record["image"] = encode_png(image)
                yield index, record
                index += 1


class OfflineCifar10(_CifarStyle, tfds.image_classification.Cifar10, skip_registration=True):
    """CIFAR-10 (TFDS ``cifar10``) from ``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz``."""

    name = "cifar10"
    LAYOUT = {
        "binary": {"archive": "cifar-10-binary.tar.gz", "folder": "cifar-10-batches-bin",
                   "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                   "test": ["test_batch.bin"], "names": [("batches.meta.txt",)]},
        "python": {"archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py",
                   "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                   "names": [("batches.meta", "label_names")], "keys": ("labels",)},
    }


class OfflineCifar100(_CifarStyle, tfds.image_classification.Cifar100, skip_registration=True):
    """CIFAR-100 (TFDS ``cifar100``) from ``cifar-100-binary.tar.gz`` or the python version."""

    name = "cifar100"
    LAYOUT = {
        "binary": {"archive": "cifar-100-binary.tar.gz", "folder": "cifar-100-binary",
                   "train": ["train.bin"], "test": ["test.bin"],
                   "names": [("coarse_label_names.txt",), ("fine_label_names.txt",)]},
        "python": {"archive": "cifar-100-python.tar.gz", "folder": "cifar-100-python",
                   "train": ["train"], "test": ["test"],
                   "names": [("meta", "coarse_label_names"), ("meta", "fine_label_names")],
                   "keys": ("coarse_labels", "fine_labels")},
    }


OFFLINE_BUILDERS = {"mnist": OfflineMNIST, "fashion_mnist": OfflineFashionMNIST,
                    "cifar10": OfflineCifar10, "cifar100": OfflineCifar100}


def offline_builder(name: str, data_dir: str | None, manual_dir: str) -> tfds.core.DatasetBuilder:
    """The manual-dir builder of ``name`` (one of :data:`OFFLINE_BUILDERS`)."""
    data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None
    return OFFLINE_BUILDERS[name](data_dir=data_dir, manual_dir=manual_dir)
