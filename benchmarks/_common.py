"""What the benchmark scripts share, for both interpreters (jaxcnn's Python 3.12 and the
PyTorch side's 3.11): only the standard library and NumPy.

- :func:`load_mnist`: the original MNIST IDX files (gzipped or not) as uint8 arrays.
- :func:`serve`: the worker protocol of ``throughput.py``: one JSON request a line on stdin
  (``setup``, ``run``, ``quit``), one JSON reply a line on stdout.
- :data:`SAME_MALLOC`, :func:`same_malloc_env`: the PyTorch side run with jaxcnn's glibc
  malloc settings (``--torch-same-malloc``).
- :func:`cpu_times`, :func:`steal_share`, :func:`load`: how busy the machine was (CPU time
  the hypervisor gave to other guests during a measurement; the load average).
- :func:`torch_python`: the interpreter with torch.
"""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import sys
from typing import Callable

import numpy as np


SAME_MALLOC = "PyTorch same malloc"
DEFAULT_TORCH_PYTHON = pathlib.Path(__file__).resolve().parent.parent / ".venv-torch/bin/python"


def torch_python(arg: str | None) -> str:
    """``arg``, else ``$JAXCNN_TORCH_PYTHON``, else the checkout's ``.venv-torch``."""
    return arg or os.environ.get("JAXCNN_TORCH_PYTHON") or str(DEFAULT_TORCH_PYTHON)


def load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def same_malloc_env() -> dict:
    """This process's environment plus the ``MALLOC_*`` and ``GLIBC_TUNABLES`` variables
    equal to the settings ``import jaxcnn`` applies (:data:`jaxcnn.allocator.ENVIRONMENT`)."""
    from jaxcnn.allocator import ENVIRONMENT

    return dict(os.environ, **ENVIRONMENT)


def cpu_times() -> tuple[int, int] | None:
    """(steal, all) CPU time in clock ticks since boot, summed over the CPUs (``/proc/stat``:
    user, nice, system, idle, iowait, irq, softirq, steal); None where there is no such file."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (ticks[7], sum(ticks)) if len(ticks) == 8 else None


def steal_share(since: tuple[int, int] | None) -> str:
    """The share of all CPU time since ``since`` (:func:`cpu_times`) that was stolen: time
    this virtual machine's CPUs were runnable but the host ran other guests. On the shared
    2-core VM these benchmarks were written on it measured 0.1% on an idle machine and 4-19%
    in the hours when every figure, jaxcnn's and PyTorch's, dropped by a quarter or more."""
    now = cpu_times()
    if since is None or now is None or now[1] <= since[1]:
        return "n/a"
    return f"{(now[0] - since[0]) / (now[1] - since[1]):.1%}"


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): magic, dimension sizes (big-endian), then uint8 data."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def missing_mnist_files(data_dir: str) -> list[str]:
    """The original MNIST files (as ``jaxcnn.data.files`` lists them) that ``data_dir``
    lacks."""
    from jaxcnn.data.files import MANUAL_SOURCES

    return [f.name for f in MANUAL_SOURCES["mnist"].variants[0]
            if not os.path.isfile(os.path.join(data_dir, f.name))]


def load_mnist(data_dir: str):
    """``((train images, labels), (test images, labels))``: uint8 ``(N, 28, 28)`` and
    ``(N,)``."""
    def pair(prefix):
        return (read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz")),
                read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")))
    return pair("train"), pair("t10k")


def serve(setup: Callable[[dict], tuple[object, dict]]) -> None:
    """Answers requests until ``quit``: ``setup`` builds a runner from the request and returns
    ``(runner, reply)``; ``run`` times ``runner.run(steps)``. An error is replied, not raised,
    and the worker keeps serving."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream
    runner = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "setup":
                runner = None
                runner, reply = setup(req)
            elif req["cmd"] == "run":
                reply = {"seconds": runner.run(int(req["steps"]))}
            elif req["cmd"] == "quit":
                return
            else:
                reply = {"error": f"unknown command {req['cmd']!r}"}
        except Exception as err:  # report, keep serving
            reply = {"error": f"{type(err).__name__}: {err}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
