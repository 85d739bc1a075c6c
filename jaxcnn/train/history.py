"""A run's record: ``history.json`` (one record per epoch), ``curves.png`` and TensorBoard."""
from __future__ import annotations

import json
import pathlib

from jaxcnn.train.rundir import write_atomically

CURVE_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")


def read_history(workdir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def write_history(workdir: str | pathlib.Path, records: list[dict]) -> None:
    """Writes the records atomically (a temporary file renamed over the old one); a full disk
    raises :class:`jaxcnn.errors.DiskFullError` with the old file intact."""
    write_atomically(pathlib.Path(workdir) / "history.json", json.dumps(records, indent=1) + "\n")


def plot_curves(workdir: str | pathlib.Path, records: list[dict], title: str = "") -> pathlib.Path:
    """Draws loss and accuracy against epoch, train and test, into ``curves.png``
    (:func:`jaxcnn.viz.plot_history`, drawn off-screen: no pyplot backend is touched)."""
    from jaxcnn.viz import plot_history

    path = pathlib.Path(workdir) / "curves.png"
    plot_history(records, title=title or None, path=path)
    return path


class TensorBoardWriter:
    """Scalars per epoch into TensorBoard event files in the workdir (via ``tf.summary``)."""

    def __init__(self, workdir: str | pathlib.Path):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(workdir))

    def write(self, record: dict) -> None:
        with self._writer.as_default():
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tf.summary.scalar(key, value, step=record["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
