"""Orbax checkpoints of a run: the newest few, the best one, verified on restore.

``WORKDIR/checkpoints/<step>`` holds the newest ``max_to_keep`` checkpoints and
``WORKDIR/checkpoints/best/<step>`` the one with the best validation metric. Saving is
asynchronous (Orbax writes in a background thread while training goes on). Orbax writes each
checkpoint into a temporary folder and renames it when complete, so a run killed mid-save
never leaves a half-written step that a restore would pick up. Once a save is committed,
jaxcnn adds a manifest (size and SHA-256 of every file); a restore checks it, and a damaged
checkpoint is reported and skipped for the previous good one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import RunDirError

MANIFEST = "jaxcnn_manifest.json"
log = logging.getLogger(__name__)


def _file_digests(folder: pathlib.Path) -> dict[str, list]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[str(path.relative_to(folder))] = [path.stat().st_size,
                                                  hashlib.sha256(path.read_bytes()).hexdigest()]
    return out


def write_manifest(step_dir: pathlib.Path) -> None:
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(_file_digests(step_dir)))
    tmp.replace(step_dir / MANIFEST)


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

    def __init__(self, directory: pathlib.Path, max_to_keep: int):
        self.directory = directory
        self.orbax = ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def seal(self) -> None:
        """Waits for pending saves and writes the manifests of committed steps lacking one."""
        self.orbax.wait_until_finished()
        for step in self.orbax.all_steps():
            step_dir = self.directory / str(step)
            if step_dir.is_dir() and not (step_dir / MANIFEST).exists():
                write_manifest(step_dir)

    def save(self, step: int, tree: dict) -> None:
        self.seal()
        self.orbax.save(step, args=ocp.args.StandardSave(tree), force=True)

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
        self.seal()
        self.orbax.close()


class Checkpoints:
    """The newest and the best checkpoints of a run, each a dict tree of arrays."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        root = pathlib.Path(workdir).resolve() / "checkpoints"
        self.directory = root
        self._latest = _Manager(root, max_to_keep)
        self._best: _Manager | None = None
        self._best_dir = root / "best"

    def save(self, step: int, tree: dict) -> None:
        """Starts saving ``tree`` as ``step`` (asynchronously)."""
        self._latest.save(step, tree)

    def save_best(self, step: int, tree: dict) -> None:
        """Replaces the best checkpoint with ``tree`` at ``step``."""
        if self._best is None:
            self._best = _Manager(self._best_dir, max_to_keep=1)
        self._best.save(step, tree)

    def latest_step(self) -> int | None:
        return self._latest.orbax.latest_step()

    def restore(self, template: dict, best: bool = False) -> tuple[dict, int]:
        """Restores the newest good checkpoint (or the best one) into ``template``'s structure."""
        if best and self._best_dir.is_dir():
            if self._best is None:
                self._best = _Manager(self._best_dir, max_to_keep=1)
            return self._best.restore(template)
        return self._latest.restore(template)

    def wait(self) -> None:
        """Blocks until every pending save is committed (and has its manifest)."""
        self._latest.seal()
        if self._best is not None:
            self._best.seal()

    def close(self) -> None:
        self._latest.close()
        if self._best is not None:
            self._best.close()


