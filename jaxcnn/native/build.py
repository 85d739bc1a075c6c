"""Builds and loads jaxcnn's oneDNN bridge for XLA's CPU backend: convolutions
(``onednn_conv.cc``), dense-layer matmuls (``onednn_matmul.cc``), batch normalization in
training (``onednn_batch_norm.cc``) and jaxcnn's own kernels, bias + ReLU + max-pool
(``bias_relu_max_pool.cc``), batch normalization + (residual) + ReLU
(``batch_norm_relu.cc``) and the input gradient of few-channel and kernel gradient of
few-tap convolutions (``few_channel_input_gradient.cc``, ``few_tap_kernel_gradient.cc``),
one library.

The C++ sources are compiled on first use with the system's C++ compiler (``$CXX``, else
``g++``) against XLA's FFI headers (shipped in jaxlib) and oneDNN (the ``onednn-cpu-gomp`` and
``onednn-devel-cpu-gomp`` wheels, dependencies of jaxcnn on x86-64 Linux, or
``$JAXCNN_ONEDNN_ROOT``). The library is cached under ``$XDG_CACHE_HOME/jaxcnn/native``
(``~/.cache/jaxcnn/native``), keyed by everything it is built from, so later processes only
load it (milliseconds). The build writes to a temporary file and renames it into place, so
concurrent first uses never see a half-written library.

``JAXCNN_NATIVE_CONV=0`` turns it off; where it cannot be built, :func:`native_status` says
why and the convolutions fall back to XLA's (``jaxcnn.models.conv``), with one warning.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

import jax
import jaxlib

HERE = pathlib.Path(__file__).parent
SOURCES = (HERE / "onednn_conv.cc", HERE / "onednn_matmul.cc", HERE / "onednn_batch_norm.cc",
           HERE / "bias_relu_max_pool.cc", HERE / "batch_norm_relu.cc",
           HERE / "few_channel_input_gradient.cc", HERE / "few_tap_kernel_gradient.cc")
# Read by every source; part of the build key.
HEADERS = (HERE / "onednn_bridge.h",)
ENV_SWITCH = "JAXCNN_NATIVE_CONV"
ENV_ROOT = "JAXCNN_ONEDNN_ROOT"
# FFI target names registered with XLA, and the C symbols that implement them.
TARGETS = {"jaxcnn_conv_forward": "JaxcnnConvForward",
           "jaxcnn_conv_forward_bias_relu": "JaxcnnConvForwardBiasRelu",
           "jaxcnn_conv_input_gradient": "JaxcnnConvInputGradient",
           "jaxcnn_conv_kernel_gradient": "JaxcnnConvKernelGradient",
           "jaxcnn_matmul": "JaxcnnMatMul",
           "jaxcnn_batch_norm_forward": "JaxcnnBatchNormForward",
           "jaxcnn_batch_norm_backward": "JaxcnnBatchNormBackward",
           "jaxcnn_bias_relu_max_pool_forward": "JaxcnnBiasReluMaxPoolForward",
           "jaxcnn_bias_relu_max_pool_backward": "JaxcnnBiasReluMaxPoolBackward",
           "jaxcnn_batch_norm_relu_forward": "JaxcnnBatchNormReluForward",
           "jaxcnn_batch_norm_add_relu_forward": "JaxcnnBatchNormAddReluForward",
           "jaxcnn_batch_norm_relu_backward": "JaxcnnBatchNormReluBackward",
           "jaxcnn_batch_norm_add_relu_backward": "JaxcnnBatchNormAddReluBackward",
           "jaxcnn_few_channel_input_gradient": "JaxcnnFewChannelInputGradient",
           "jaxcnn_few_tap_kernel_gradient": "JaxcnnFewTapKernelGradient"}
INSTALL_HINT = ("pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0 "
                "(or set $JAXCNN_ONEDNN_ROOT to a oneDNN 3 install with include/ and lib/)")


@dataclasses.dataclass(frozen=True)
class NativeStatus:
    """Whether the oneDNN convolution is in use; ``reason`` says why not, or which library."""
    available: bool
    reason: str
    library: pathlib.Path | None = None


class BuildError(RuntimeError):
    pass


def _cache_root() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxcnn" / "native"


def find_onednn() -> pathlib.Path:
    """The root of a oneDNN install (``include/oneapi/dnnl/dnnl.hpp``, ``lib/libdnnl.so``)."""
    candidates = [os.environ.get(ENV_ROOT), sys.prefix, sys.base_prefix]
    for root in filter(None, candidates):
        path = pathlib.Path(root)
        if (path / "include/oneapi/dnnl/dnnl.hpp").is_file() and (path / "lib/libdnnl.so").exists():
            return path
    raise BuildError(f"oneDNN headers and library not found under {sys.prefix}: {INSTALL_HINT}")


def _compiler() -> list[str]:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler {compiler!r} on PATH: install g++ (or set $CXX)")
    return [compiler]


def _command(root: pathlib.Path, output: pathlib.Path) -> list[str]:
    return [*_compiler(), "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
            f"-I{jax.ffi.include_dir()}", f"-I{root / 'include'}", *map(str, SOURCES),
            f"-L{root / 'lib'}", "-ldnnl", f"-Wl,-rpath,{root / 'lib'}", "-o", str(output)]


def _build_key(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.read_bytes())
    digest.update((root / "include/oneapi/dnnl/dnnl_version.h").read_bytes())
    digest.update(" ".join(_command(root, pathlib.Path("out"))).encode())
    digest.update(jaxlib.__version__.encode())
    return digest.hexdigest()[:16]


def build_library() -> pathlib.Path:
    """The compiled library, built now if the cache does not hold it; raises
    :class:`BuildError` with the compiler's message when it cannot be built."""
    root = find_onednn()
    target = _cache_root() / _build_key(root) / "libjaxcnn_onednn.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run(_command(root, pathlib.Path(scratch)), capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            names = ", ".join(path.name for path in SOURCES)
            raise BuildError(f"compiling {names} failed:\n{done.stderr[-2000:]}")
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return target


_REGISTERED: set[str] = set()


def _register(library: pathlib.Path) -> None:
    handle = ctypes.CDLL(str(library))
    for name, symbol in TARGETS.items():
        if name not in _REGISTERED:  # XLA keeps one handler per name for the process
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(handle, symbol)),
                                        platform="cpu")
            _REGISTERED.add(name)


@functools.cache
def native_status() -> NativeStatus:
    """Builds (once), loads and registers the FFI targets; never raises."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return NativeStatus(False, f"turned off by ${ENV_SWITCH}")
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return NativeStatus(False, f"the oneDNN bridge is built for x86-64 Linux only, "
                                   f"not {sys.platform}/{platform.machine()}")
    try:
        library = build_library()
        _register(library)
    except (BuildError, OSError, subprocess.TimeoutExpired) as err:
        warnings.warn(f"jaxcnn: oneDNN bridge unavailable, so CPU convolutions, dense layers, "
                      f"BatchNorm and its ReLU, and conv-ReLU-pool epilogues use XLA's, which train slower "
                      f"(README, Performance): {err}", RuntimeWarning, stacklevel=2)
        return NativeStatus(False, str(err))
    return NativeStatus(True, f"oneDNN convolutions, matmuls and batch normalization, and the "
                              f"bias-ReLU-max-pool, batch-norm-ReLU, few-channel input "
                              f"gradient and few-tap kernel gradient kernels, from {library}",
                        library)
