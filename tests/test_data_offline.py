"""Datasets built offline from the original files: the real MNIST, and CIFAR archives written
here in the original formats."""
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcnn import data
from jaxcnn.data import files, formats
from jaxcnn.errors import DataError, UnknownNameError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(shared_data, tfds_dir):
    """MNIST built once into the session's TFDS dir from ../shared/data/mnist."""
    manual = str(shared_data / "mnist")
    spec = data.dataset_spec("mnist", tfds_dir, manual_dir=manual)
    return {"spec": spec, "data_dir": tfds_dir, "manual": manual}


def fingerprints(images, labels) -> list[str]:
    """Order-free content: the sorted digests of every (image, label) pair."""
    return sorted(hashlib.md5(im.tobytes() + bytes([int(lb)])).hexdigest()
                  for im, lb in zip(images, labels))


def test_mnist_spec_from_the_name_alone(mnist):
    spec = mnist["spec"]
    assert spec.split_sizes == {"train": 60000, "test": 10000}
    assert spec.image_shape == (28, 28, 1) and spec.num_classes == 10
    assert spec.class_names == tuple(str(i) for i in range(10))
    assert spec.mean == (0.1307,) and spec.std == (0.3081,) and "published" in spec.stats_source
    assert spec.version == "3.0.1"  # TFDS's own MNIST version


def test_plain_tfds_load_reads_the_offline_build(mnist):
    test = tfds.load("mnist", split="test", data_dir=mnist["data_dir"], batch_size=-1,
                     as_supervised=True, download=False)
    images, labels = tfds.as_numpy(test)
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    assert int(images.sum(dtype=np.int64)) == 264923200
    # Exactly the examples of the original files, in TFDS's order.
    originals = formats.read_idx_pair(f"{mnist['manual']}/t10k-images-idx3-ubyte.gz",
                                      f"{mnist['manual']}/t10k-labels-idx1-ubyte.gz")
    assert fingerprints(images, labels) == fingerprints(*originals)


def test_load_split_train_sizes_counts_pixels_and_statistics(mnist):
    images, labels = data.load_split("mnist", "train", mnist["data_dir"], mnist["manual"])
    assert images.shape == (60000, 28, 28, 1) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    assert int(images.sum(dtype=np.int64)) == 1567298545
    stats = data.stats.compute_channel_stats(images)
    assert stats.mean[0] == pytest.approx(0.1307, abs=1e-4)
    assert stats.std[0] == pytest.approx(0.3081, abs=1e-4)


def test_fashion_mnist_files_pass_their_checksums(shared_data):
    variant, paths = files.locate_and_verify("fashion_mnist", str(shared_data / "fashion_mnist"))
    assert len(paths) == 4


def test_unknown_names_and_empty_manual_dirs_are_named(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnist_nope'.*digits"):
        data.dataset_spec("mnist_nope", str(tmp_path))
    with pytest.raises(DataError) as err:
        data.dataset_spec("mnist", str(tmp_path), manual_dir=str(tmp_path / "empty"))
    assert "dataset 'mnist'" in str(err.value) and "t10k-labels-idx1-ubyte.gz" in str(err.value)
    # No manual dir, no network: says so at once instead of retrying downloads for minutes.
    if not data.datasets._resolves(data.datasets.DOWNLOAD_HOSTS["cifar10"]):
        with pytest.raises(DataError, match="cannot be downloaded.*--manual-dir"):
            data.dataset_spec("cifar10", str(tmp_path))


# --- CIFAR: small archives in the original layouts, with their checksums patched in ---

NAMES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def add(tar, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def planar(images) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar10_binary(path, rng):
    train = rng.integers(0, 256, (10, 32, 32, 3), np.uint8)
    test = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    train_labels, test_labels = np.arange(10) % 10, np.array([9, 0, 5])
    with tarfile.open(path, "w:gz") as tar:
        for b in range(5):
            rows = [bytes([train_labels[i]]) + planar(train[i:i + 1]).tobytes()
                    for i in range(2 * b, 2 * b + 2)]
            add(tar, f"cifar-10-batches-bin/data_batch_{b + 1}.bin", b"".join(rows))
        add(tar, "cifar-10-batches-bin/test_batch.bin", b"".join(
            bytes([test_labels[i]]) + planar(test[i:i + 1]).tobytes() for i in range(3)))
        add(tar, "cifar-10-batches-bin/batches.meta.txt", ("\n".join(NAMES10) + "\n\n").encode())
    return (train, train_labels), (test, test_labels)


def write_cifar100_python(path, rng):
    train = rng.integers(0, 256, (6, 32, 32, 3), np.uint8)
    test = rng.integers(0, 256, (2, 32, 32, 3), np.uint8)
    fine, coarse = [0, 99, 5, 6, 7, 8], [0, 19, 1, 1, 2, 2]
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cifar-100-python/train", pickle.dumps(
            {b"data": planar(train), b"fine_labels": fine, b"coarse_labels": coarse}, protocol=2))
        add(tar, "cifar-100-python/test", pickle.dumps(
            {b"data": planar(test), b"fine_labels": [3, 4], b"coarse_labels": [5, 6]}, protocol=2))
        add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
    return (train, fine, coarse), (test, [3, 4], [5, 6])


def trust(monkeypatch, dataset: str, path, variant: int) -> None:
    """Makes the archive written here the expected file of ``dataset``."""
    md5, sha256 = files.digests(str(path))
    source = files.MANUAL_SOURCES[dataset]
    variants = list(source.variants)
    variants[variant] = (files.ManualFile(path.name, path.stat().st_size, md5, sha256),)
    monkeypatch.setitem(files.MANUAL_SOURCES, dataset,
                        files.ManualSource(dataset, source.homepage, tuple(variants),
                                           source.variant_names))


def by_id(examples) -> dict:
    return {ex["id"].decode(): ex for ex in tfds.as_numpy(examples)}


def test_cifar10_from_the_binary_archive(tmp_path, monkeypatch):
    manual = tmp_path / "manual"
    manual.mkdir()
    archive = manual / "cifar-10-binary.tar.gz"
    (train, train_labels), (test, test_labels) = write_cifar10_binary(archive,
                                                                      np.random.default_rng(0))
    with pytest.raises(DataError, match="expected 170052171"):  # not the published archive
        data.dataset_spec("cifar10", str(tmp_path / "tfds"), manual_dir=str(manual))
    trust(monkeypatch, "cifar10", archive, 0)
    spec = data.dataset_spec("cifar10", str(tmp_path / "tfds"), manual_dir=str(manual))
    assert spec.split_sizes == {"train": 10, "test": 3} and spec.image_shape == (32, 32, 3)
    assert spec.class_names == tuple(NAMES10) and spec.mean[0] == 0.4914
    loaded = by_id(tfds.load("cifar10", split="train", data_dir=str(tmp_path / "tfds")))
    for i in range(10):
        np.testing.assert_array_equal(loaded[f"train_{i:05d}"]["image"], train[i])
        assert loaded[f"train_{i:05d}"]["label"] == train_labels[i]
    loaded = by_id(tfds.load("cifar10", split="test", data_dir=str(tmp_path / "tfds")))
    assert [loaded[f"test_{i:05d}"]["label"] for i in range(3)] == test_labels.tolist()


def test_cifar100_from_the_python_archive(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    (train, fine, coarse), _ = write_cifar100_python(archive, np.random.default_rng(1))
    trust(monkeypatch, "cifar100", archive, 1)
    spec = data.dataset_spec("cifar100", str(tmp_path / "tfds"), manual_dir=str(tmp_path))
    assert spec.num_classes == 100 and spec.class_names[99] == "fine99"
    builder = tfds.builder("cifar100", data_dir=str(tmp_path / "tfds"))
    assert builder.info.features["coarse_label"].names[19] == "coarse19"
    loaded = by_id(builder.as_dataset(split="train"))
    for i in range(6):
        example = loaded[f"train_{i:05d}"]
        np.testing.assert_array_equal(example["image"], train[i])
        assert (example["label"], example["coarse_label"]) == (fine[i], coarse[i])
    images, labels = data.load_split("cifar100", "test", str(tmp_path / "tfds"))
    assert images.shape == (2, 32, 32, 3) and sorted(labels.tolist()) == [3, 4]
