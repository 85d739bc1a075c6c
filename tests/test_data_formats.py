"""The original-file formats (IDX, CIFAR binary and python), PNG encoding, and checksums."""
import gzip
import io
import pickle
import shutil
import struct
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from jaxcnn.data import files, formats
from jaxcnn.data.png import encode_png
from jaxcnn.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def test_idx_images_and_labels_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "lab").write_bytes(idx_bytes(labels))  # uncompressed works too
    got_images, got_labels = formats.read_idx_pair(str(tmp_path / "img.gz"), str(tmp_path / "lab"))
    np.testing.assert_array_equal(got_images, images[..., None])
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


def test_idx_rejects_bad_magic_truncation_and_mismatched_counts(tmp_path):
    with pytest.raises(DataError, match="not an IDX file"):
        formats.parse_idx(b"\x12\x34\x08\x01\x00\x00\x00\x01\x07", "x")
    raw = idx_bytes(np.zeros((4, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"declares shape \(4, 2, 2\).*truncated"):
        formats.parse_idx(raw[:-3], "cut")
    (tmp_path / "i").write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8)))
    (tmp_path / "l").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="4 images but .* 3 labels"):
        formats.read_idx_pair(str(tmp_path / "i"), str(tmp_path / "l"))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="bad.gz is not a complete gzip file"):
        formats.read_idx(str(tmp_path / "bad.gz"))


def cifar_record(labels, image_hwc: np.ndarray) -> bytes:
    return bytes(labels) + image_hwc.transpose(2, 0, 1).tobytes()  # R plane, G plane, B plane


def test_cifar_binary_records_are_channel_planar():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
    raw = b"".join(cifar_record([7, i], images[i]) for i in range(3))
    got, labels = formats.parse_cifar_records(raw, 2)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [[7, 0], [7, 1], [7, 2]])
    with pytest.raises(DataError, match="not a whole number of 3074-byte"):
        formats.parse_cifar_records(raw[:-1], 2, "cut.bin")


def test_cifar_python_batches_load_without_running_code():
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), np.uint8)
    data = images.transpose(0, 3, 1, 2).reshape(2, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [4, 2]}, protocol=2)
    batch = formats.load_cifar_pickle(raw)
    np.testing.assert_array_equal(formats.planar_to_nhwc(batch["data"]), images)
    assert batch["labels"] == [4, 2]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match="refusing to load builtins.print"):
        formats.load_cifar_pickle(pickle.dumps({b"data": Evil()}))


def test_cifar_archive_reads_members_and_names_missing_ones(tmp_path):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        content = b"cat\ndog\n"
        info = tarfile.TarInfo("top/batches.meta.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    archive = formats.CifarArchive(str(path), "binary", "top")
    assert archive.names("batches.meta.txt") == ["cat", "dog"]
    with pytest.raises(DataError, match="lacks top/test_batch.bin"):
        archive.member("test_batch.bin")
    (tmp_path / "cut.tar.gz").write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="cut.tar.gz is not a readable tar.gz"):
        formats.CifarArchive(str(tmp_path / "cut.tar.gz"), "binary", "top")


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_encoding_is_lossless(channels):
    image = np.random.default_rng(channels).integers(0, 256, (9, 7, channels), np.uint8)
    decoded = tf.io.decode_png(encode_png(image), channels=channels).numpy()
    np.testing.assert_array_equal(decoded, image)


def test_a_truncated_or_modified_file_fails_its_checksum(tmp_path, shared_data):
    original = shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    expected = files.MANUAL_SOURCES["mnist"].variants[0][3]
    assert expected.name == original.name
    files.verify("mnist", str(original), expected)  # the real file passes
    cut = tmp_path / original.name
    cut.write_bytes(original.read_bytes()[:1000])
    with pytest.raises(DataError) as err:
        files.verify("mnist", str(cut), expected)
    assert str(cut) in str(err.value) and "1000 bytes, expected 4542" in str(err.value)
    assert "truncated" in str(err.value) and "download" in str(err.value)
    changed = bytearray(original.read_bytes())
    changed[100] ^= 0xFF
    cut.write_bytes(bytes(changed))
    with pytest.raises(DataError) as err:
        files.verify("mnist", str(cut), expected)
    assert f"expected {expected.md5}" in str(err.value) and str(cut) in str(err.value)


def test_locate_names_the_missing_files_and_accepts_a_dataset_subfolder(tmp_path, shared_data):
    with pytest.raises(DataError) as err:
        files.locate("mnist", str(tmp_path))
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "--manual-dir" in message
    (tmp_path / "mnist").mkdir()
    for f in files.MANUAL_SOURCES["mnist"].variants[0]:
        shutil.copy(shared_data / "mnist" / f.name, tmp_path / "mnist" / f.name)
    variant, paths = files.locate("mnist", str(tmp_path))
    name = "t10k-images-idx3-ubyte.gz"
    assert paths[name] == str(tmp_path / "mnist" / name)
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz or cifar-10-python.tar.gz"):
        files.locate("cifar10", str(tmp_path))
