"""A minimal lossless PNG encoder for 8-bit grey, RGB and RGBA images.

TFDS stores ``tfds.features.Image`` as PNG bytes and accepts already-encoded bytes; encoding
here, with ``zlib`` and no TensorFlow graph per image, prepares MNIST about five times faster
than handing TFDS numpy arrays. Decoding gives back exactly the same pixels (PNG is
lossless), so the prepared dataset reads the same as one TFDS encoded itself.

Layout (W3C PNG specification, 2nd edition, sections 5 and 11): the 8-byte signature, an
``IHDR`` chunk (width, height, bit depth 8, colour type 0 grey / 2 RGB / 6 RGBA, compression 0,
filter 0, no interlace), one ``IDAT`` chunk holding the zlib stream of the rows, each row
prefixed by filter type 0 (None), and an empty ``IEND``. Every chunk is length, type, data and
the CRC-32 of type and data.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 3: 2, 4: 6}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
    """PNG bytes of an ``(H, W)`` or ``(H, W, C)`` uint8 image, ``C`` in 1, 3, 4."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"encode_png takes uint8 (H, W, 1|3|4) images, got {image.dtype} "
                         f"{image.shape}")
    height, width, channels = image.shape
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # column 0: filter type 0
    rows[:, 1:] = image.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)) + _chunk(b"IEND", b""))
