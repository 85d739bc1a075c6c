"""Shared fixtures: locating the offline data files and the PyTorch reference interpreter.

Tests that need files from outside the repository (the MNIST files in ``../shared/data``, a
Python with torchvision) skip with a reason where those are absent, except under ``CI=true``,
where their absence is a failure: CI must never pass by skipping.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(os.environ.get("JAXCNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"
# The CLI's persistent compilation cache: one throwaway directory for the whole test session
# (shared by the subprocesses tests start), never the user's ~/.cache.
os.environ.setdefault("JAXCNN_COMPILE_CACHE", tempfile.mkdtemp(prefix="jaxcnn-test-xla-cache-"))


def skip_or_fail(reason: str) -> None:
    """Skips the test with ``reason``; under CI=true fails it instead."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def require_native_bridge() -> None:
    """For the modules that test jaxcnn/native: skips the whole module when the oneDNN bridge
    cannot be built or loaded here; under CI=true fails instead (it must build there)."""
    from jaxcnn.native import native_status

    status = native_status()
    if status.available:
        return
    if IN_CI:
        pytest.fail(f"CI=true and the oneDNN bridge is unavailable: {status.reason}",
                    pytrace=False)
    pytest.skip(f"no oneDNN bridge: {status.reason}", allow_module_level=True)


def zoo_forward_text(name: str, shape, batch: int = 128) -> str:
    """The lowered (StableHLO) text of zoo model ``name``'s forward pass on a float32 batch of
    ``batch`` images of ``shape``, traced from shapes alone (nothing is computed)."""
    import jax
    import jax.numpy as jnp

    from jaxcnn.models import get_model

    model = get_model(name)
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
    return jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).as_text()


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The folder holding the original MNIST / Fashion-MNIST files (``../shared/data``)."""
    if not (SHARED_DATA / "mnist").is_dir():
        skip_or_fail(f"the offline dataset files are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """A TFDS data directory private to the test session (the offline digits build into it)."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def torch_python() -> str | None:
    """An interpreter with torch and torchvision: $JAXCNN_TORCH_PYTHON or .venv-torch."""
    candidate = os.environ.get("JAXCNN_TORCH_PYTHON") or str(ROOT / ".venv-torch" / "bin" / "python")
    return candidate if pathlib.Path(candidate).exists() else None


@pytest.fixture(scope="session")
def torch_reference(tmp_path_factory):
    """``torch_reference(name, input_shape_nchw, **kwargs)`` -> dict(x, y, state_dict).

    Runs ``tests/torch_reference.py`` under the torch interpreter; results are cached per
    call within the session.
    """
    python = torch_python()
    if python is None:
        skip_or_fail("no Python with torch/torchvision (.venv-torch or $JAXCNN_TORCH_PYTHON)")
    cache: dict = {}
    folder = tmp_path_factory.mktemp("torch_reference")

    def run(name: str, input_shape, seed: int = 0, **kwargs):
        key = (name, tuple(input_shape), seed, json.dumps(kwargs, sort_keys=True))
        if key not in cache:
            out = folder / f"{name}_{len(cache)}.npz"
            cmd = [python, str(ROOT / "tests" / "torch_reference.py"), name, str(out),
                   "--input-shape", ",".join(map(str, input_shape)),
                   "--kwargs", json.dumps(kwargs), "--seed", str(seed)]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            with np.load(out) as data:
                cache[key] = {
                    "x": data["x"], "y": data["y"],
                    "state_dict": {k[3:]: data[k] for k in data.files if k.startswith("sd/")},
                }
        return cache[key]

    return run


def pytest_report_header(config):
    return [f"python {sys.version.split()[0]}; shared data at {SHARED_DATA}; "
            f"torch reference python: {torch_python()}"]
