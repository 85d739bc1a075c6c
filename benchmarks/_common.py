"""What the benchmark scripts share, for both interpreters (jaxcnn's Python 3.12 and the
PyTorch side's 3.11): only the standard library and NumPy.

- :func:`load_mnist`: the original MNIST IDX files (gzipped or not) as uint8 arrays.
- :func:`serve`: the worker protocol of ``throughput.py``: one JSON request a line on stdin
  (``setup``, ``run``, ``quit``), one JSON reply a line on stdout.
- :data:`SAME_MALLOC`, :func:`same_malloc_env`: the PyTorch side run with jaxcnn's glibc
  malloc settings (``--torch-same-malloc``).
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from typing import Callable

import numpy as np


SAME_MALLOC = "PyTorch same malloc"


def same_malloc_env() -> dict:
    """This process's environment plus the ``MALLOC_*`` and ``GLIBC_TUNABLES`` variables
    equal to the settings ``import jaxcnn`` applies (:data:`jaxcnn.allocator.ENVIRONMENT`)."""
    from jaxcnn.allocator import ENVIRONMENT

    return dict(os.environ, **ENVIRONMENT)


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): magic, dimension sizes (big-endian), then uint8 data."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


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
