"""The run directory: where a run lives, what it holds, and the checks before touching it.

A run directory holds ``config.json``, ``history.json``, ``curves.png``, TensorBoard event
files and ``checkpoints/``. Every check here runs before anything is written, so a refused
command leaves the directory exactly as it was.
"""
from __future__ import annotations

import datetime
import errno
import json
import pathlib
import shutil

import ml_collections

from jaxcnn.errors import DiskFullError, RunDirError

# Keys that define what a run is; a resumed run must agree with the stored config on them.
# batch_size and seed fix the data stream, so resuming at a step needs them unchanged too.
IDENTITY_KEYS = ("model", "dataset", "num_classes", "optimizer", "schedule", "batch_size", "seed")


def default_workdir(config: ml_collections.ConfigDict, root: str = "runs") -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path(root) / f"{stamp}-{config.model}-{config.dataset}"


def read_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config stored in a run directory; raises :class:`RunDirError` if it is not a run."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{workdir} is not a jaxcnn run (it has no config.json); "
                          "pass the workdir of a `jaxcnn train` run")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path} is not valid JSON ({err}); the run directory is damaged") from err


def check_new_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """A fresh run may go into a missing or empty directory only."""
    if (workdir / "config.json").is_file():
        stored = read_run_config(workdir)
        if stored.get("model") != config.model:
            raise RunDirError(
                f"{workdir} holds a run of model {stored.get('model')!r}, not {config.model!r}; "
                "choose another --workdir")
        raise RunDirError(f"{workdir} already holds a run of {config.model!r}; pass --resume to "
                          "continue it, or choose another --workdir")
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise RunDirError(f"{workdir} exists and is not an empty directory nor a jaxcnn run; "
                          "choose another --workdir")


def check_resume(workdir: pathlib.Path, stored: ml_collections.ConfigDict,
                 config: ml_collections.ConfigDict) -> None:
    """A resumed run must be the same model, data and optimizer as the stored one."""
    for key in IDENTITY_KEYS:
        if stored.get(key) != config.get(key):
            raise RunDirError(
                f"{workdir} holds a run with {key}={stored.get(key)!r}, but this command asks "
                f"for {key}={config.get(key)!r}; drop the option to resume it, or start a new "
                "run in another --workdir")


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    write_atomically(workdir / "config.json", config.to_json(indent=1) + "\n")


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file renamed over it, so a reader (or a
    resumed run) sees the old content or the new, never half. When the disk is full the
    temporary file is deleted, ``path`` keeps its old content, and :class:`DiskFullError`
    says so and how to continue."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free / 2**20
        raise DiskFullError(
            f"the disk is full: writing {path} failed with 'No space left on device' "
            f"({free:,.1f} MB free there). Training stopped; {path.name} keeps its previous "
            "content and the checkpoints are untouched. Free space on that disk, then "
            f"continue with: jaxcnn train --resume --workdir {path.parent}") from err
