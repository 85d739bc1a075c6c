"""Native CPU kernels for XLA through its FFI: oneDNN's convolution (:mod:`.conv`) and matmul
(:mod:`.matmul`), built on first use (:mod:`.build`). :func:`native_status` says whether they
are in use and why not."""
from jaxcnn.native.build import NativeStatus, native_status

__all__ = ["NativeStatus", "native_status"]
