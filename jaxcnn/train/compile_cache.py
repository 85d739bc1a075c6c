"""JAX's persistent compilation cache, on by default for the ``jaxcnn`` command.

A compiled train step is stored on disk, keyed by the program, the JAX version and the
devices, so the second run of the same model and batch size skips XLA's compilation (for
``resnet50`` on this 2-core CPU: tens of seconds down to a few; see the README's performance
section). The cache lives in the user's cache directory, ``$XDG_CACHE_HOME/jaxcnn/xla``
(``~/.cache/jaxcnn/xla``); ``--compile-cache DIR`` or ``$JAXCNN_COMPILE_CACHE`` moves it,
``off`` turns it off. Library users call :func:`enable_compilation_cache` themselves (a
library should not write to a user's disk unasked).
"""
from __future__ import annotations

import os
import pathlib

import jax

from jaxcnn.errors import ConfigError

ENV = "JAXCNN_COMPILE_CACHE"
OFF = ("off", "none", "0", "false")
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxcnn" / "xla"


def resolve_cache_dir(setting: str | None = None) -> pathlib.Path | None:
    """The cache directory for ``setting`` (an argument, else ``$JAXCNN_COMPILE_CACHE``, else
    the default); ``None`` when it says ``off``."""
    value = setting if setting is not None else os.environ.get(ENV)
    if value is not None and value.strip().lower() in OFF:
        return None
    return pathlib.Path(value).expanduser() if value else default_cache_dir()


def enable_compilation_cache(setting: str | None = None) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at :func:`resolve_cache_dir`'s directory
    (creating it) and returns it; returns ``None`` and leaves JAX alone when it is ``off``."""
    directory = resolve_cache_dir(setting)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the compilation cache directory {directory} ({err.strerror}); "
            f"pass --compile-cache DIR (or set ${ENV}) to a writable directory, or "
            "--compile-cache off") from None
    if not os.access(directory, os.W_OK):
        raise ConfigError(f"the compilation cache directory {directory} is not writable; pass "
                          f"--compile-cache DIR (or set ${ENV}), or --compile-cache off")
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
