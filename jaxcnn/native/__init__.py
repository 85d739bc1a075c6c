"""Native CPU kernels for XLA through its FFI: oneDNN's convolution (:mod:`.conv`), built on
first use (:mod:`.build`). :func:`native_status` says whether it is in use and why not."""
from jaxcnn.native.build import NativeStatus, native_status

__all__ = ["NativeStatus", "native_status"]
