"""glibc malloc settings that keep XLA:CPU's buffers in memory the process already holds.

XLA:CPU allocates every executable's temporary buffers (activations, gradients) with
``malloc`` on each run and frees them at its end. With glibc's defaults, blocks above the mmap
threshold (at most 32 MiB) are fresh ``mmap`` pages each time, and the per-thread arenas of
XLA's worker threads hand freed memory back with ``madvise``, so each training step touches
its working set as new pages and pays a minor page fault per 4 KiB. Measured on 2 cores
(batch 128, train step with Adam): ``resnet20`` took 73,700 faults per step (288 MiB) and ran
at 406-433 images/s; with the settings below, 0 faults and 631-633 images/s. ``mnist_cnn``:
12,200 faults, 1,608-1,730 -> 609 faults, 2,051-2,176 images/s.

:func:`tune_malloc` (run by ``import jaxcnn``) therefore sets, with ``mallopt``:

* ``M_ARENA_MAX=1``: one arena for all threads. glibc's per-thread arenas map blocks larger
  than their heaps afresh whatever ``M_MMAP_MAX`` says (resnet20 with 2 arenas: 36,874
  faults per step; with 4 or the default: 73,749);
* ``M_MMAP_MAX=0``: large blocks come from the heap, not from fresh mappings;
* ``M_TRIM_THRESHOLD=2 GiB - 1``: freed memory stays with the process for reuse (up to 2 GiB
  of free heap top; beyond that it is returned).

The costs: the process's resident size stays at its peak instead of shrinking between
steps, and the one arena's lock makes XLA's threads wait in small steps (LeNet-5 at batch
24: 9,808-11,323 against 10,152-12,155 images/s), where ``JAXCNN_MALLOC_TUNING=0`` is faster.
The arena limit only binds threads that have not allocated yet, so it must run before JAX
starts its thread pools (its first computation): importing ``jaxcnn`` first does that.

It does nothing where the C library is not glibc, where ``LD_PRELOAD`` brings another
allocator (jemalloc, tcmalloc, mimalloc), where the user chose malloc settings (any
``MALLOC_*`` variable, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), or with
``JAXCNN_MALLOC_TUNING=0``. :func:`malloc_tuning` says what was done and why.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# name: (mallopt parameter, value, the variable glibc reads for it at process start)
SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
            "M_MMAP_MAX": (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_"),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1, "MALLOC_TRIM_THRESHOLD_")}
# The same settings as environment variables, for a process that does not import jaxcnn
# (the PyTorch side of the benchmarks, with --torch-same-malloc).
ENVIRONMENT = {variable: str(value) for _, value, variable in SETTINGS.values()}

_status: str | None = None


def _reason_to_skip() -> str | None:
    if os.environ.get("JAXCNN_MALLOC_TUNING", "1") == "0":
        return "off (JAXCNN_MALLOC_TUNING=0)"
    if not sys.platform.startswith("linux"):
        return f"not applied ({sys.platform} has no glibc malloc)"
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc_version = ""
    if not libc_version.startswith("glibc"):
        return "not applied (the C library is not glibc)"
    preload = os.environ.get("LD_PRELOAD", "")
    for other in ("jemalloc", "tcmalloc", "mimalloc"):
        if other in preload:
            return f"not applied ({other} replaces glibc's malloc through LD_PRELOAD)"
    chosen = sorted(name for name in os.environ if name.startswith("MALLOC_"))
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"not applied (the environment sets {', '.join(chosen)}; those settings stand)"
    return None


def tune_malloc() -> str:
    """Applies the settings once per process; returns :func:`malloc_tuning`'s text."""
    global _status
    if _status is not None:
        return _status
    reason = _reason_to_skip()
    if reason is not None:
        _status = reason
        return _status
    libc = ctypes.CDLL(None)
    failed = [name for name, (param, value, _) in SETTINGS.items()
              if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1]
    if failed:
        _status = f"partly applied (mallopt refused {', '.join(failed)})"
    else:
        _status = "applied (" + ", ".join(f"{k}={v}" for k, (_, v, _) in SETTINGS.items()) + ")"
    return _status


def malloc_tuning() -> str:
    """What :func:`tune_malloc` did in this process: ``"applied (...)"`` or why not."""
    return _status if _status is not None else "not run (jaxcnn.allocator was not imported)"
