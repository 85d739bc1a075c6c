"""Orbax checkpoints of the train state, one per epoch, in ``WORKDIR/checkpoints/<step>``.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed mid-save never leaves a half-written step that a later restore would pick up.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxcnn.errors import RunDirError
from jaxcnn.train.state import TrainState


class Checkpoints:
    """Saves and restores :class:`TrainState` (plus the epoch) under ``workdir/checkpoints``."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, state: TrainState, epoch: int) -> None:
        """Saves ``state`` at its step, recording ``epoch`` (the count of finished epochs)."""
        tree = {**state.checkpoint_tree(), "epoch": jnp.asarray(epoch, jnp.int32)}
        self._manager.save(int(state.step), args=ocp.args.StandardSave(tree))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, int]:
        """Restores the newest (or the given) step into the structure of ``template``.

        Returns ``(state, epoch)``. Raises :class:`RunDirError` if there is none.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise RunDirError(f"no checkpoint in {self.directory}; train first, or drop --resume")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                {**template.checkpoint_tree(), "epoch": jnp.zeros((), jnp.int32)})
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        epoch = int(tree.pop("epoch"))
        return template.from_checkpoint_tree(tree), epoch

    def wait(self) -> None:
        """Blocks until every pending save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
