"""Readers of the original distribution formats of MNIST-style and CIFAR datasets.

- IDX (LeCun et al., the MNIST page http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS
  FOR THE MNIST DATABASE"): a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim``
  32-bit big-endian sizes, then the data in C order. MNIST and Fashion-MNIST use type ``0x08``
  (unsigned byte), ``ndim`` 3 for images ``(N, 28, 28)`` and 1 for labels ``(N,)``; the files
  are distributed gzip-compressed.
- CIFAR binary (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version"):
  fixed-length records of ``label_bytes`` label bytes (1 for CIFAR-10; coarse then fine for
  CIFAR-100) followed by 3,072 image bytes, the 1,024 red, then green, then blue values of the
  32x32 image in row-major order. Label names are text files, one name a line.
- CIFAR python: each batch a pickled dict with ``data`` ``(N, 3072)`` uint8 (same channel-planar
  layout) and ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100).
  Unpickling is restricted to the numpy array constructors, so a tampered file cannot run code.

Every reader checks what it reads and raises :class:`jaxcnn.errors.DataError` naming the file.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib

import numpy as np

from jaxcnn.errors import DataError

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
CIFAR_SIDE = 32
CIFAR_IMAGE_BYTES = 3 * CIFAR_SIDE * CIFAR_SIDE


def read_bytes(path: str) -> bytes:
    """The content of ``path``, gunzipped where it is gzip-compressed (by its magic bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is not a complete gzip file ({err}); it may be truncated: "
                            "download it again") from None
    return raw


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses an IDX file's bytes into an array of the shape its header declares."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{source} is not an IDX file: its magic number is "
                        f"{raw[:4].hex() or 'empty'}"
                        ", expected 0000 then a type byte (08 for unsigned bytes) and the rank")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: the IDX header is cut short ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{source}: the IDX header declares shape {shape} ({expected} bytes in "
                        f"all) but the file holds {len(raw)} bytes; it is truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not) into an array."""
    return parse_idx(read_bytes(path), path)


def read_idx_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style images ``(N, H, W, 1)`` uint8 and labels ``(N,)`` int64 from two IDX files."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected (N, H, W) unsigned bytes, got {images.dtype} "
                        f"{images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a vector of labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; the two files are from different sets")
    return images[..., None], labels.astype(np.int64)


def parse_cifar_records(raw: bytes, label_bytes: int, source: str = "<bytes>"):
    """Parses CIFAR binary records: ``(images (N, 32, 32, 3) uint8, labels (N, label_bytes))``."""
    record = label_bytes + CIFAR_IMAGE_BYTES
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{source}: {len(raw)} bytes is not a whole number of {record}-byte CIFAR "
                        f"records ({label_bytes} label byte(s) + 3072 pixels); it is truncated")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    images = rows[:, label_bytes:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), rows[:, :label_bytes].astype(np.int64)


def planar_to_nhwc(data: np.ndarray) -> np.ndarray:
    """CIFAR's ``(N, 3072)`` rows (R plane, G plane, B plane) to ``(N, 32, 32, 3)``."""
    return np.ascontiguousarray(
        np.asarray(data, np.uint8).reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # protocol-2 pickles made by Python 3 wrap bytes in it

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_cifar_pickle(raw: bytes, source: str = "<bytes>") -> dict:
    """A CIFAR python batch as a dict with ``str`` keys (the originals are Python 2 pickles)."""
    try:
        content = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # pickle raises many kinds on corrupt input
        raise DataError(f"{source} is not a CIFAR python batch: {err}") from None
    if not isinstance(content, dict):
        raise DataError(f"{source} is not a CIFAR python batch (a {type(content).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CifarArchive:
    """Reads the members of a CIFAR ``.tar.gz`` (binary or python version) without extracting it.

    ``kind`` is ``"binary"`` or ``"python"``; ``folder`` the archive's top folder
    (``cifar-10-batches-bin``, ``cifar-10-batches-py``, ``cifar-100-binary``, ``cifar-100-python``).
    """

    def __init__(self, path: str, kind: str, folder: str):
        self.path, self.kind, self.folder = path, kind, folder
        try:
            with tarfile.open(path, "r:*") as tar:
                self._members = {m.name: tar.extractfile(m).read()
                                 for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is not a readable tar.gz archive ({err}); it may be "
                            "truncated: download it again") from None

    def member(self, name: str) -> bytes:
        key = f"{self.folder}/{name}"
        if key not in self._members:
            raise DataError(f"{self.path} lacks {key}; it is not the original CIFAR archive "
                            f"(it holds {', '.join(sorted(self._members)[:8]) or 'nothing'})")
        return self._members[key]

    def names(self, member: str, key: str | None = None) -> list[str]:
        """Label names: lines of a text member (binary) or a list in the meta pickle (python)."""
        raw = self.member(member)
        if key is None:
            return [line.strip() for line in raw.decode().splitlines() if line.strip()]
        meta = load_cifar_pickle(raw, f"{self.path}:{member}")
        if key not in meta:
            raise DataError(f"{self.path}:{member} has no {key!r} entry")
        return [_text(v) for v in meta[key]]

    def binary_batch(self, member: str, label_bytes: int):
        return parse_cifar_records(self.member(member), label_bytes, f"{self.path}:{member}")

    def python_batch(self, member: str, label_keys: tuple[str, ...]):
        """``(images (N, 32, 32, 3), labels (N, len(label_keys)))`` from a python batch."""
        source = f"{self.path}:{member}"
        batch = load_cifar_pickle(self.member(member), source)
        missing = [k for k in ("data", *label_keys) if k not in batch]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}")
        data = np.asarray(batch["data"])
        if data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_BYTES:
            raise DataError(f"{source}: data has shape {data.shape}, expected (N, 3072)")
        labels = np.stack([np.asarray(batch[k], np.int64) for k in label_keys], axis=1)
        if len(labels) != len(data):
            raise DataError(f"{source}: {len(data)} images but {len(labels)} labels")
        return planar_to_nhwc(data), labels
