"""Native CPU kernels for XLA through its FFI: oneDNN's convolution (:mod:`.conv`), matmul
(:mod:`.matmul`) and batch normalization (:mod:`.batch_norm`), and jaxcnn's own bias + ReLU +
max-pool kernel (:mod:`.pool`), built on first use (:mod:`.build`). :func:`native_status` says
whether they are in use and why not."""
from jaxcnn.native.build import NativeStatus, native_status

__all__ = ["NativeStatus", "native_status"]
