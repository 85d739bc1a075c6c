"""Orbax checkpoints of a run: the newest few, the best one, verified on restore.

``WORKDIR/checkpoints/<step>`` holds the newest ``max_to_keep`` checkpoints and
``WORKDIR/checkpoints/best/<step>`` the one with the best validation metric. Saving is
asynchronous (Orbax writes in a background thread while training goes on). Orbax writes each
checkpoint into a temporary folder and renames it when complete, so a run killed mid-save
never leaves a half-written step that a restore would pick up. Once a save is committed,
jaxcnn adds a manifest (size and SHA-256 of every file); a restore checks it, and a damaged
checkpoint is reported and skipped for the previous good one.

A disk that fills up during a save stops the run with :class:`DiskFullError`, which names the
disk, its free space, the last complete checkpoint and the command to continue. The
half-written step's temporary folder is deleted (one left by a killed process is deleted at
the resumed run's first save); Orbax never lists such folders as steps, so ``--resume`` starts
from the last complete checkpoint. Only process 0 writes manifests or deletes anything.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import DiskFullError, RunDirError

MANIFEST = "jaxcnn_manifest.json"
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix for a step still being written
log = logging.getLogger(__name__)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is ENOSPC/EDQUOT.

    Python writes raise ``OSError(errno.ENOSPC)``; tensorstore's writes (Orbax's arrays)
    surface as ``ValueError("RESOURCE_EXHAUSTED: ... No space left on device
    [os_error_code='28']")``.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if ("No space left on device" in text or "Disk quota exceeded" in text
                or f"os_error_code='{errno.ENOSPC}'" in text):
            return True
        err = err.__cause__ or err.__context__
    return False


def _mount_point(path: pathlib.Path) -> pathlib.Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _is_primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _file_digests(folder: pathlib.Path) -> dict[str, list]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[str(path.relative_to(folder))] = [path.stat().st_size,
                                                  hashlib.sha256(path.read_bytes()).hexdigest()]
    return out


def write_manifest(step_dir: pathlib.Path) -> None:
    tmp = step_dir / (MANIFEST + ".tmp")
    try:
        tmp.write_text(json.dumps(_file_digests(step_dir)))
        tmp.replace(step_dir / MANIFEST)
    except OSError:
        tmp.unlink(missing_ok=True)  # the step itself is committed and stays usable
        raise


def verify_manifest(step_dir: pathlib.Path) -> None:
    """Raises ``ValueError`` naming the first file that differs from the manifest."""
    path = step_dir / MANIFEST
    if not path.exists():
        return  # killed between commit and manifest: Orbax's own checks still apply
    expected = json.loads(path.read_text())
    actual = _file_digests(step_dir)
    for name, (size, digest) in expected.items():
        if name not in actual:
            raise ValueError(f"file {name} is missing")
        if actual[name][0] != size:
            raise ValueError(f"file {name} has {actual[name][0]} bytes, expected {size}")
        if actual[name][1] != digest:
            raise ValueError(f"file {name} does not match its SHA-256")


class _Manager:
    """One Orbax manager plus manifests for its committed steps."""

    def __init__(self, directory: pathlib.Path, max_to_keep: int, name: str):
        self.directory = directory
        self.pending: int | None = None  # the step of the save in flight
        self.failed = False
        self.saved = False  # whether this process has saved through this manager yet
        # Orbax names its cross-process barriers after the operation only; two managers saving
        # at once (newest and best) in a multi-process run would meet at each other's barriers
        # and deadlock. A prefix per manager keeps their barriers apart.
        self.orbax = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=f"jaxcnn_{name}")))

    def _guarded(self, action, what: str):
        """Runs ``action`` (writing ``what``); turns a full disk into :class:`DiskFullError`."""
        if self.failed:
            raise DiskFullError(f"checkpoints in {self.directory} are disabled after the disk "
                                "filled up; see the error above")
        try:
            return action()
        except Exception as err:
            if not is_disk_full(err):
                raise
            self.failed = True
            raise self._disk_full(what) from err

    def _disk_full(self, what: str) -> DiskFullError:
        removed = self.remove_partial()
        try:
            self.orbax.reload()
        except Exception:  # noqa: BLE001 - the message matters more than the refresh
            pass
        last = self.orbax.latest_step()
        usage = shutil.disk_usage(self.directory)
        workdir = self.directory.parent if self.directory.name == "checkpoints" else \
            self.directory.parent.parent
        return DiskFullError(
            f"the disk is full: writing {what} to {self.directory} failed with "
            f"'No space left on device' (the filesystem mounted at "
            f"{_mount_point(self.directory)} has {_megabytes(usage.free)} free of "
            f"{_megabytes(usage.total)}). Training stopped; "
            + ("the half-written step was deleted; " if removed else "")
            + (f"the last complete checkpoint is step {last}. " if last is not None else
               "there is no complete checkpoint yet. ")
            + "Free space on that disk (delete old runs, or keep fewer checkpoints with "
            f"--config.checkpoint_keep=1), then continue with: jaxcnn train --resume --workdir "
            f"{workdir}")

    def remove_partial(self) -> list[pathlib.Path]:
        """Deletes the temporary folders of unfinished saves (process 0); returns them."""
        if not _is_primary() or not self.directory.is_dir():
            return []
        partial = [p for p in self.directory.iterdir() if TMP_MARK in p.name]
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return partial

    def seal(self) -> None:
        """Waits for pending saves and writes the manifests of committed steps lacking one."""
        self._guarded(self.orbax.wait_until_finished, f"checkpoint step {self.pending}")
        if not _is_primary():
            return
        for step in self.orbax.all_steps():
            step_dir = self.directory / str(step)
            if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
                self._guarded(lambda d=step_dir: write_manifest(d),
                              f"the manifest of checkpoint step {step} (complete without it)")

    def save(self, step: int, tree: dict) -> None:
        if not self.saved:  # a writer now: steps left half-written by a killed run go
            self.remove_partial()  # (not on open: `jaxcnn eval` may run beside a training),
            _barrier(f"jaxcnn: {self.directory} cleaned")  # before any process writes there
            self.saved = True
        self.seal()
        self.pending = step
        self._guarded(lambda: self.orbax.save(step, args=ocp.args.StandardSave(tree), force=True),
                      f"checkpoint step {step}")

    def restore(self, template: dict, step: int | None = None) -> tuple[dict, int]:
        """The newest good checkpoint (or ``step``), falling back past damaged ones."""
        steps = sorted(self.orbax.all_steps(), reverse=True)
        if step is not None:
            steps = [s for s in steps if s == step]
        if not steps:
            raise RunDirError(f"no checkpoint in {self.directory}; train first, or drop --resume")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        failures = []
        for candidate in steps:
            try:
                verify_manifest(self.directory / str(candidate))
                tree = self.orbax.restore(candidate, args=ocp.args.StandardRestore(abstract))
            except Exception as err:  # damaged files surface as many exception types
                message = f"checkpoint step {candidate} in {self.directory} is unusable ({err})"
                log.warning(message)
                print(f"warning: {message}; trying an older one", flush=True)
                failures.append(f"step {candidate}: {err}")
                continue
            return tree, candidate
        raise RunDirError(f"no usable checkpoint in {self.directory}: " + "; ".join(failures))

    def close(self) -> None:
        try:
            if not self.failed:
                self.seal()
        finally:
            try:
                self.orbax.close()
            except Exception as err:  # noqa: BLE001 - after a failed save Orbax re-raises it
                if not (self.failed and is_disk_full(err)):
                    raise
            finally:
                if self.failed:  # the failed save's other writers may have run on until
                    self.remove_partial()  # Orbax closed; nothing writes now


class Checkpoints:
    """The newest and the best checkpoints of a run, each a dict tree of arrays."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        root = pathlib.Path(workdir).resolve() / "checkpoints"
        self.directory = root
        self._latest = _Manager(root, max_to_keep, "latest")
        self._best: _Manager | None = None
        self._best_dir = root / "best"

    def save(self, step: int, tree: dict) -> None:
        """Starts saving ``tree`` as ``step`` (asynchronously)."""
        self._latest.save(step, tree)

    def save_best(self, step: int, tree: dict) -> None:
        """Replaces the best checkpoint with ``tree`` at ``step``."""
        if self._best is None:
            self._best = _Manager(self._best_dir, 1, "best")
        self._best.save(step, tree)

    def latest_step(self) -> int | None:
        return self._latest.orbax.latest_step()

    def restore(self, template: dict, best: bool = False) -> tuple[dict, int]:
        """Restores the newest good checkpoint (or the best one) into ``template``'s structure."""
        if best and self._best_dir.is_dir():
            if self._best is None:
                self._best = _Manager(self._best_dir, 1, "best")
            return self._best.restore(template)
        return self._latest.restore(template)

    def wait(self) -> None:
        """Blocks until every pending save is committed (and has its manifest)."""
        self._latest.seal()
        if self._best is not None:
            self._best.seal()

    def close(self) -> None:
        try:
            self._latest.close()
        finally:
            if self._best is not None:
                self._best.close()


