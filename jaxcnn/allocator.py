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
* ``M_TRIM_THRESHOLD=-1``: freed memory stays with the process for reuse (the heap is never
  trimmed);
* transparent huge pages for the heap, where the kernel gives them only on request (its
  ``madvise`` mode, the common default): 2 MiB pages instead of 4 KiB, so the convolutions
  and the memory-bound kernels walk their activations with 1/512 of the TLB entries. Paired
  whole steps at batch 128 (two processes, alternating, 16-40 rounds, 2 to 4 runs each):
  resnet20 1.01-1.04x, mnist_cnn 1.03-1.04x, LeNet-5 1.01-1.06x, resnet50 at 64x64
  0.99-1.11x (:func:`_advise_huge_pages`). First touches can cost more where a hypervisor
  backs the guest's memory lazily: on this 2-core VM, 2 GiB touched for the first time took
  3.3-6.2 s in huge pages against 1.2 s in 4 KiB pages, and 0.33-0.75 s once the VM had
  backed that memory (resnet50's first step, three processes each: 4.4, 4.6 and 2.2 s against
  2.4-2.7 s; later steps 2.0-2.5 s either way).

The costs: the process's resident size stays at its peak (in 2 MiB pages) instead of
shrinking between steps, and the one arena's lock makes XLA's threads wait in small steps
(LeNet-5 at batch 24: 9,808-11,323 against 10,152-12,155 images/s), where
``JAXCNN_MALLOC_TUNING=0`` is faster.
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
# name: (mallopt parameter, value, the variable glibc reads for it at process start, its value
# there: -1 for the trim threshold means "never" to mallopt, SIZE_MAX to the variable)
SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX", "1"),
            "M_MMAP_MAX": (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_", "0"),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, -1, "MALLOC_TRIM_THRESHOLD_", str(2**64 - 1))}
# The kernel's transparent huge page setting, constants from <sys/mman.h>, and the bounds of
# the heap address space reserved for huge pages (:func:`huge_page_reserve`), halved down to
# MIN_RESERVE while the kernel refuses.
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
OVERCOMMIT_SETTING = "/proc/sys/vm/overcommit_memory"
HUGE_PAGE, MADV_HUGEPAGE = 2 << 20, 14
MAX_RESERVE, MIN_RESERVE = 64 << 30, 256 << 20
# The same settings for a process that does not import jaxcnn (the PyTorch side of the
# benchmarks, with --torch-same-malloc): glibc's own tunable advises huge pages for all the
# heap it grows from process start.
ENVIRONMENT = {variable: text for _, _, variable, text in SETTINGS.values()}
ENVIRONMENT["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"

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
    libc = ctypes.CDLL(None, use_errno=True)
    failed = [name for name, (param, value, _, _) in SETTINGS.items()
              if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1]
    if failed:
        _status = f"partly applied (mallopt refused {', '.join(failed)})"
    else:
        _status = ("applied (" + ", ".join(f"{k}={v}" for k, (_, v, _, _) in SETTINGS.items())
                   + "; " + _advise_huge_pages(libc) + ")")
    return _status


def _setting(path: str) -> str:
    """A kernel setting's text ("" where it cannot be read); for a choice like "always
    [madvise] never", the bracketed word."""
    try:
        with open(path) as setting:
            text = setting.read().strip()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text


def huge_page_reserve() -> int:
    """The heap address space to reserve for huge pages: half the machine's memory, at most
    MAX_RESERVE and a quarter of any address-space or data-segment limit (``ulimit -v``,
    ``ulimit -d``), in whole huge pages."""
    import resource  # Unix only; the settings apply on Linux with glibc alone

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [resource.getrlimit(kind)[0] for kind in (resource.RLIMIT_AS, resource.RLIMIT_DATA)]
    quarters = [limit // 4 for limit in limits if limit != resource.RLIM_INFINITY]
    return min([memory // 2, MAX_RESERVE] + quarters) // HUGE_PAGE * HUGE_PAGE


def _advise_huge_pages(libc) -> str:
    """Asks the kernel to back the heap with transparent huge pages (2 MiB: one TLB entry
    where 512 would be needed, and 1/512 of the page faults), where it does so only on
    request ("madvise" mode, the common default): grows the heap by untouched address space,
    advises it with ``madvise(MADV_HUGEPAGE)`` and frees it to malloc, which (never trimming)
    keeps it as the top of its heap for the buffers to come. This is what glibc's tunable
    ``glibc.malloc.hugetlb=1`` does, which only works from process start. Nothing becomes
    resident until used; under strict overcommit (``vm.overcommit_memory=2``) the reserve
    would count against the commit limit, so none is made."""
    mode = _setting(THP_SETTING)
    if mode != "madvise":
        return f"huge pages: kernel mode {mode or 'unknown'}, nothing to advise"
    if _setting(OVERCOMMIT_SETTING) == "2":
        return "huge pages: not advised under strict overcommit (vm.overcommit_memory=2)"
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    size, block = huge_page_reserve(), None
    while size >= MIN_RESERVE and not block:
        block = libc.malloc(size)
        size = size if block else size // 2
    if not block:
        return "huge pages: the kernel refused heap address space to advise"
    start = -(-block // HUGE_PAGE) * HUGE_PAGE
    end = (block + size) // HUGE_PAGE * HUGE_PAGE
    advised = libc.madvise(start, end - start, MADV_HUGEPAGE) == 0
    libc.free(block)
    if not advised:
        return f"huge pages: madvise refused (errno {ctypes.get_errno()})"
    return f"huge pages advised for {(end - start) >> 20} MiB of heap address space"


def malloc_tuning() -> str:
    """What :func:`tune_malloc` did in this process: ``"applied (...)"`` or why not."""
    return _status if _status is not None else "not run (jaxcnn.allocator was not imported)"
