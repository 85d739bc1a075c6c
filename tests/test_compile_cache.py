"""The persistent compilation cache of the command line (jaxcnn/train/compile_cache.py)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from jaxcnn.train.compile_cache import default_cache_dir, resolve_cache_dir

SCRIPT = pathlib.Path(sys.executable).parent / "jaxcnn"


def test_the_cache_directory_follows_the_option_then_the_environment_then_xdg(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    monkeypatch.delenv("JAXCNN_COMPILE_CACHE", raising=False)
    assert default_cache_dir() == pathlib.Path("/somewhere/cache/jaxcnn/xla")
    assert resolve_cache_dir() == pathlib.Path("/somewhere/cache/jaxcnn/xla")
    monkeypatch.setenv("JAXCNN_COMPILE_CACHE", "/env/dir")
    assert resolve_cache_dir() == pathlib.Path("/env/dir")
    assert resolve_cache_dir("/flag/dir") == pathlib.Path("/flag/dir")
    assert resolve_cache_dir("off") is None
    monkeypatch.setenv("JAXCNN_COMPILE_CACHE", "OFF")
    assert resolve_cache_dir() is None


def test_a_training_run_fills_the_cache_and_a_second_run_reads_it(tmp_path, tfds_dir):
    cache = tmp_path / "cache"
    cmd = [str(SCRIPT), "train", "--epochs", "1", "--data-dir", tfds_dir,
           "--compile-cache", str(cache)]
    env = {**os.environ, "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
    first = subprocess.run([*cmd, "--workdir", str(tmp_path / "a")], env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert any(p.name.startswith("jit_train_step-") for p in cache.iterdir()), \
        sorted(p.name for p in cache.iterdir())
    second = subprocess.run([*cmd, "--workdir", str(tmp_path / "b")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr


def test_an_unusable_cache_directory_is_a_clear_error_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run([str(SCRIPT), "train", "--workdir", str(tmp_path / "run"),
                             "--compile-cache", str(blocker / "cache")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "compilation cache directory" in result.stderr and "--compile-cache" in result.stderr
    assert not (tmp_path / "run").exists()
