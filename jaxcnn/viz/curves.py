"""Training curves: loss and accuracy per epoch, train and test, from a run's history."""
from __future__ import annotations

import json
import pathlib

from jaxcnn.errors import RunDirError
from jaxcnn.viz._figure import new_figure, save

MAX_EPOCH_TICKS = 15


def read_records(history_records_or_workdir) -> tuple[list[dict], str]:
    """The history records and a title (``model on dataset`` for a run directory)."""
    if isinstance(history_records_or_workdir, (str, pathlib.Path)):
        workdir = pathlib.Path(history_records_or_workdir)
        config_path, history_path = workdir / "config.json", workdir / "history.json"
        if not config_path.is_file():
            raise RunDirError(f"{workdir} is not a jaxcnn run (it has no config.json); "
                              "pass the workdir of a `jaxcnn train` run")
        records = json.loads(history_path.read_text()) if history_path.is_file() else []
        if not records:
            raise RunDirError(f"{workdir} has no finished epoch (history.json is missing or "
                              "empty); train the run for at least one epoch")
        config = json.loads(config_path.read_text())
        return records, f"{config.get('model', '?')} on {config.get('dataset', '?')}"
    records = list(history_records_or_workdir)
    if not records:
        raise RunDirError("plot_history got no history records")
    return records, ""


def plot_history(history_records_or_workdir, *, title: str | None = None, path=None):
    """Loss and accuracy against epoch, train (solid) and test (dashed).

    Takes the records of ``history.json`` (dicts with ``epoch``, ``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy``) or a run directory holding them.
    A ``test_top5_accuracy`` curve is added when the records have one. Returns the figure;
    writes a PNG at ``path``.
    """
    records, default_title = read_records(history_records_or_workdir)
    epochs = [r["epoch"] for r in records]
    fig = new_figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    curves = [("train", "-", "tab:blue"), ("test", "--", "tab:orange")]
    for split, style, colour in curves:
        if f"{split}_loss" in records[0]:
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in records], style, color=colour,
                         marker="o", label=split)
        if f"{split}_accuracy" in records[0]:
            ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in records], style,
                        color=colour, marker="o", label=split)
    if "test_top5_accuracy" in records[0]:
        ax_acc.plot(epochs, [100 * r["test_top5_accuracy"] for r in records], ":",
                    color="tab:green", marker=".", label="test top-5")
    last = records[-1]
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    summary = (f" (last: test {100 * last['test_accuracy']:.2f}%)"
               if "test_accuracy" in last else "")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy" + summary)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= MAX_EPOCH_TICKS:  # a tick at every epoch, none between epochs
            ax.set_xticks(epochs)
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or default_title or "training curves")
    return save(fig, path)
