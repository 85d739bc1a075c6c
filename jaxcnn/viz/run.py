"""Every figure of a finished run, written into ``WORKDIR/figures/`` (``jaxcnn viz``)."""
from __future__ import annotations

import pathlib

import numpy as np

from jaxcnn.errors import JaxCNNError, RunDirError
from jaxcnn.viz._figure import label_name, new_figure, save
from jaxcnn.viz.activations import first_conv_layer, plot_activations
from jaxcnn.viz.curves import read_records, plot_history
from jaxcnn.viz.filters import plot_filters
from jaxcnn.viz.metrics import confusion_matrix, plot_confusion, predict, worst_misclassified
from jaxcnn.viz.saliency import plot_saliency, saliency

FIGURES = ("filters.png", "activations.png", "curves.png", "confusion.png",
           "misclassified.png", "saliency.png")


def write_all(workdir, max_examples: int | None = None, *, misclassified: int = 16
              ) -> list[pathlib.Path]:
    """Writes the six figures of a finished run into ``WORKDIR/figures/``.

    ``filters.png`` (first convolution's kernels), ``activations.png`` (the convolution
    outputs for the first test image), ``curves.png`` (history), ``confusion.png``,
    ``misclassified.png`` (the ``misclassified`` most confident mistakes) and ``saliency.png``
    (one test image of each class), all from the latest checkpoint on the run's test split,
    or its first ``max_examples`` images. Returns the paths written, in that order. Raises
    :class:`RunDirError` if ``workdir`` is not a finished run.
    """
    workdir = pathlib.Path(workdir)
    records, run_name = read_records(workdir)  # RunDirError unless a run with history
    if max_examples is not None and max_examples <= 0:
        raise JaxCNNError(f"max_examples must be a positive integer, got {max_examples}")
    model, variables, spec, config = _restore(workdir)
    split = "test" if "test" in spec.split_sizes else _held_out_split(spec)
    from jaxcnn import data

    images, labels = data.load_split(config["dataset"], split, config.get("data_dir") or None)
    if max_examples is not None:
        images, labels = images[:max_examples], labels[:max_examples]
    logits = predict(model, variables, images, config.get("eval_batch_size") or 256)
    predicted = logits.argmax(axis=-1)
    names = spec.class_names
    out = workdir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FIGURES]

    layer = first_conv_layer(model, variables, spec.image_shape)
    if layer is None:
        _message(f"{run_name}: the model has no convolution layer", paths[0])
    else:
        plot_filters(variables, layer, title=None, path=paths[0])
    plot_activations(model, variables, images[0],
                     title=f"{run_name}: activation maps of {split} image 0 (true class "
                           f"{label_name(names, int(labels[0]))}, predicted "
                           f"{label_name(names, int(predicted[0]))}); "
                           "Zeiler & Fergus 2014", path=paths[1])
    plot_history(records, title=run_name, path=paths[2])
    matrix = confusion_matrix(labels, predicted, spec.num_classes)
    accuracy = np.trace(matrix) / matrix.sum()
    plot_confusion(matrix, names, title=f"{run_name}: {split} split, {matrix.sum()} examples, "
                                        f"accuracy {100 * accuracy:.2f}%", path=paths[3])
    worst_misclassified(images, labels, logits, misclassified, names, path=paths[4])
    chosen = _one_per_class(labels, spec.num_classes, limit=10)
    maps = saliency(model, variables, images[chosen])
    plot_saliency(images[chosen], maps, labels=labels[chosen], targets=predicted[chosen],
                  class_names=names, path=paths[5],
                  title=f"{run_name}: class saliency maps of the predicted class, max over "
                        "channels of |d logit / d image| (Simonyan et al. 2014)")
    return paths


def _restore(workdir: pathlib.Path):
    """``(model, variables, spec, config)`` of the run's best (else newest) checkpoint."""
    import jaxcnn
    from jaxcnn.train import rundir

    config = rundir.read_run_config(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise RunDirError(f"{workdir} has no checkpoints/ folder; train the run first")
    model, variables, spec = jaxcnn.load(workdir)
    return model, variables, spec, config


def _held_out_split(spec) -> str:
    for split in ("validation", "valid", "val"):
        if split in spec.split_sizes:
            return split
    raise RunDirError(f"dataset {spec.name!r} has no test or validation split to draw figures "
                      f"from (its splits: {', '.join(sorted(spec.split_sizes))})")


def _one_per_class(labels: np.ndarray, num_classes: int, limit: int) -> np.ndarray:
    """The first example of each class present, classes in order, at most ``limit``."""
    present = [c for c in range(num_classes) if (labels == c).any()][:limit]
    return np.array([int(np.flatnonzero(labels == c)[0]) for c in present], np.int64)


def _message(text: str, path: pathlib.Path):
    fig = new_figure(6, 2)
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return save(fig, path)
