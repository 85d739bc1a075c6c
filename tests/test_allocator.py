"""jaxcnn.allocator: the glibc malloc settings applied by ``import jaxcnn``.

Each case runs a fresh interpreter, since the settings are process-wide and the arena limit
only binds threads that have not allocated yet.
"""
import os
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="the malloc settings apply to glibc only")

# A worker thread (like XLA's) allocates and touches 16 blocks of 4 MiB, frees them, four
# times after a first warm-up round; the minor page faults of those four rounds are printed.
FAULTS = """
import resource, sys, threading
import numpy as np
if sys.argv[1] == "import":
    import jaxcnn
def one_round():
    blocks = [np.ones(2**20, np.float32) for _ in range(16)]
    del blocks
faults = []
def work():
    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        one_round()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults[0])
"""


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_")
           and k not in ("JAXCNN_MALLOC_TUNING", "GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(extra)
    return env


def run(code, *args, **env):
    out = subprocess.run([sys.executable, "-c", code, *args], env=clean_env(**env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


STATUS = "import jaxcnn; print(jaxcnn.malloc_tuning())"


def thp_mode():
    from jaxcnn import allocator

    return allocator._setting(allocator.THP_SETTING)


def expected_huge_page_status():
    from jaxcnn import allocator

    if thp_mode() != "madvise":
        return f"huge pages: kernel mode {thp_mode() or 'unknown'}, nothing to advise"
    if allocator._setting(allocator.OVERCOMMIT_SETTING) == "2":
        return "huge pages: not advised under strict overcommit (vm.overcommit_memory=2)"
    return "huge pages advised for "


@glibc
def test_import_applies_the_settings():
    status = run(STATUS)
    assert status.startswith("applied (M_ARENA_MAX=1, M_MMAP_MAX=0, "
                             "M_TRIM_THRESHOLD=-1; " + expected_huge_page_status())
    if "advised for" in status:
        # the reserve less at most one huge page at each end, where the block is not aligned
        from jaxcnn import allocator

        reserved = int(status.split("advised for ")[1].split()[0])
        assert allocator.huge_page_reserve() // 2**20 - 4 <= reserved \
            <= allocator.huge_page_reserve() // 2**20


@glibc
@pytest.mark.skipif(thp_mode() != "madvise", reason="no huge pages to advise: the kernel's "
                    "transparent huge pages are not in madvise mode")
def test_the_reserve_leaves_most_of_a_data_limit():
    """Under a 4 GiB data-segment limit (``ulimit -d``, set by the child itself before the
    import) the reserve is at most a quarter of it, and JAX still runs."""
    limit = 4 << 30
    code = ("import resource; resource.setrlimit(resource.RLIMIT_DATA, "
            f"({limit}, {limit})); " + STATUS
            + "; import jax.numpy as jnp; print(jnp.ones(8).sum())")
    status, total = run(code).split("\n")[:2]
    assert total == "8.0"
    reserved = int(status.split("advised for ")[1].split()[0])
    assert 0 < reserved <= (limit // 4) >> 20


@glibc
def test_the_heap_is_never_trimmed():
    """A 3 GiB block (above any trim threshold mallopt's int can set) freed at the top of
    the heap stays with the process (its data segment does not shrink), so the next step
    reuses it; without the settings it is returned."""
    code = """
import ctypes, re, sys
if sys.argv[1] == "import":
    import jaxcnn
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
data = lambda: int(re.search(r"VmData:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
block = libc.malloc(3 << 30)
before = data()
libc.free(block)
print((before - data()) >> 10)
"""
    assert int(run(code, "import")) == 0
    assert int(run(code, "import", JAXCNN_MALLOC_TUNING="0")) >= 1000


# A worker thread mallocs and touches 64 MiB (with ctypes: NumPy asks for huge pages itself);
# the anonymous memory the kernel backs with huge pages, in MiB, is printed.
HUGE = """
import ctypes, sys, threading
if sys.argv[1] == "import":
    import jaxcnn
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
thread = threading.Thread(target=lambda: ctypes.memset(libc.malloc(64 << 20), 1, 64 << 20))
thread.start()
thread.join()
with open("/proc/self/smaps_rollup") as rollup:
    print(next(int(line.split()[1]) for line in rollup
               if line.startswith("AnonHugePages:")) >> 10)
"""


@glibc
@pytest.mark.skipif(thp_mode() != "madvise", reason="the kernel's transparent huge pages "
                    "are not in madvise mode (always: every process gets them; never: none)")
def test_heap_gets_transparent_huge_pages():
    """With the kernel in madvise mode, a process gets huge pages only where it asks: after
    ``import jaxcnn`` a worker thread's 64 MiB block is (almost) all huge pages; without the
    settings, none."""
    assert int(run(HUGE, "import")) >= 60
    assert int(run(HUGE, "import", JAXCNN_MALLOC_TUNING="0")) == 0


@glibc
def test_user_choices_stand():
    assert run(STATUS, JAXCNN_MALLOC_TUNING="0") == "off (JAXCNN_MALLOC_TUNING=0)"
    assert run(STATUS, MALLOC_ARENA_MAX="4") == (
        "not applied (the environment sets MALLOC_ARENA_MAX; those settings stand)")
    assert "GLIBC_TUNABLES" in run(STATUS, GLIBC_TUNABLES="glibc.malloc.arena_max=2")


@glibc
def test_another_preloaded_allocator_is_left_alone():
    """The check reads LD_PRELOAD only; naming a library that does not exist makes the loader
    warn on stderr and go on, so the interpreter still runs."""
    assert run(STATUS, LD_PRELOAD="/nonexistent/libjemalloc.so.2") == (
        "not applied (jemalloc replaces glibc's malloc through LD_PRELOAD)")


@glibc
def test_freed_blocks_are_reused_without_page_faults():
    """Without the settings, each round of 64 MiB in a worker thread comes back as new pages
    (thousands of faults; fewer than 16,384 per round where the kernel uses huge pages);
    with them, the freed blocks are reused and no page faults."""
    untuned = int(run(FAULTS, "import", JAXCNN_MALLOC_TUNING="0"))
    bare = int(run(FAULTS, "bare"))
    tuned = int(run(FAULTS, "import"))
    assert untuned > 2000 and bare > 2000, (untuned, bare)
    assert tuned < 100, tuned


def test_tune_malloc_runs_once_and_reports_the_same():
    from jaxcnn import allocator

    assert allocator.malloc_tuning() == allocator.tune_malloc()  # jaxcnn is imported here
