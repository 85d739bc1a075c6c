"""Predictions over a whole split, the confusion matrix, and the most confident mistakes."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from jaxcnn.errors import JaxCNNError
from jaxcnn.viz._figure import (as_model_input, grid_shape, label_name, new_figure, save,
                                show_image, tile_axes, wrap)


def predict(model, variables, images, batch_size: int = 256) -> np.ndarray:
    """The logits of ``model`` on ``images``, computed ``batch_size`` images at a time.

    Only one batch is converted to float and held on the device at once, so a whole test
    split fits in memory. uint8 images are scaled to [0, 1]; float images are used as they
    are. Every batch has the same shape (the last one is zero-padded and trimmed), so the
    model compiles once. Returns a ``(N, num_classes)`` float32 numpy array.
    """
    if batch_size <= 0:
        raise JaxCNNError(f"batch_size must be a positive integer, got {batch_size}")
    count = len(images)
    if count == 0:
        raise JaxCNNError("predict got no images")
    size = min(batch_size, count)
    outputs = []
    for start in range(0, count, size):
        batch = as_model_input(images[start:start + size])
        real = len(batch)
        if real < size:
            batch = np.concatenate([batch, np.zeros((size - real, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(_logits(model, variables, batch))[:real])
    return np.concatenate(outputs).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, x):
    return model.apply(variables, x, train=False)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Exact counts: entry ``[t, p]`` is the number of examples of class ``t`` predicted ``p``.

    Rows are true classes, columns predicted classes; the matrix sums to the number of
    examples and its diagonal to the number predicted correctly.
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise JaxCNNError(f"labels and predictions differ in length: {labels.size} and "
                          f"{predictions.size}")
    for what, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise JaxCNNError(f"{what} must lie in 0..{num_classes - 1}, got values from "
                              f"{values.min()} to {values.max()}")
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Correct / total for each true class (the recall); NaN for a class with no example."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def plot_confusion(matrix, class_names: Sequence[str] | None = None, *, title: str | None = None,
                   path=None):
    """The confusion matrix (counts written in the cells) beside the per-class accuracy bars.

    ``matrix`` comes from :func:`confusion_matrix`; ``class_names`` label both axes. Returns
    the figure; writes a PNG at ``path``.
    """
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    names = [label_name(class_names, i) for i in range(n)]
    accuracy = per_class_accuracy(matrix)
    side = min(max(4.5, 0.45 * n + 2), 14)
    fig = new_figure(side * 1.75, side)
    fig.get_layout_engine().set(wspace=0.12)
    grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 0.6])
    ax = fig.add_subplot(grid[0])
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="examples")
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (counts)")
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for t in range(n):
            for p in range(n):
                if matrix[t, p]:
                    ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=8,
                            color="white" if matrix[t, p] > threshold else "black")
    bars = fig.add_subplot(grid[1])
    rows = np.arange(n)
    bars.barh(rows, np.nan_to_num(accuracy) * 100, color="tab:blue")
    bars.set_yticks(rows, names)
    bars.invert_yaxis()  # class 0 on top, as in the matrix
    bars.set(xlim=(0, 118), xlabel="accuracy (%)", title="per-class accuracy")
    totals = matrix.sum(axis=1)
    if n <= 40:
        for row, (acc, total) in enumerate(zip(accuracy, totals)):
            text = "no examples" if np.isnan(acc) else f"{100 * acc:.1f}% ({matrix[row, row]}/{total})"
            bars.text(1, row, text, va="center", fontsize=8,
                      color="white" if not np.isnan(acc) and acc > 0.35 else "black")
    overall = np.trace(matrix) / max(matrix.sum(), 1)
    fig.suptitle(title or f"{matrix.sum()} examples, accuracy {100 * overall:.2f}%")
    return save(fig, path)


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def most_confident_errors(labels, logits, k: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` misclassified examples the model was surest of.

    Returns ``(indices, predicted classes, probabilities of the predicted class)``, most
    confident first; fewer than ``k`` if there are fewer mistakes.
    """
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=-1)
    confidence = probabilities.max(axis=-1)
    wrong = np.flatnonzero(predicted != np.asarray(labels).reshape(-1))
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    return order, predicted[order], confidence[order]


def worst_misclassified(images, labels, logits, k: int = 16,
                        class_names: Sequence[str] | None = None, *, title: str | None = None,
                        path=None):
    """A grid of the ``k`` test images misclassified with the highest confidence.

    Each tile is titled ``true→pred (p)``, ``p`` the softmax probability of the wrong class.
    Returns the figure; writes a PNG at ``path``.
    """
    labels = np.asarray(labels).reshape(-1)
    indices, predicted, confidence = most_confident_errors(labels, logits, k)
    wrong = int((np.asarray(logits).argmax(axis=-1) != labels).sum())
    count = max(len(indices), 1)
    rows, columns = grid_shape(count, 8)
    width = max(6.0, 1.5 * columns + 0.4)
    fig = new_figure(width, 1.75 * rows + 0.9)
    axes = tile_axes(fig, count, rows, columns)
    if not len(indices):
        axes[0].text(0.5, 0.5, "no misclassified examples", ha="center", va="center")
        axes[0].axis("off")
    for ax, index, pred, prob in zip(axes, indices, predicted, confidence):
        show_image(ax, images[index])
        ax.set_title(f"{label_name(class_names, int(labels[index]))}\u2192"
                     f"{label_name(class_names, int(pred))} ({prob:.2f})", fontsize=8)
    fig.suptitle(wrap(title or f"the {len(indices)} most confident of {wrong} mistakes "
                               f"(among {len(labels)} images), titled true\u2192predicted "
                               "(probability of the prediction)", width), fontsize=10)
    return save(fig, path)
