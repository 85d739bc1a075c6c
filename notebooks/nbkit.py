"""What the notebooks share: the digit images they train on and the short loop that trains.

Kept in one file so that each notebook tells its own story and none repeats the plumbing.
Everything here is jaxcnn's public API: ``data.dataset_spec`` and ``data.prepared_builder``
for the images (read with TFDS, which decodes only the slice asked for), and
``create_train_state``, ``train_step`` and ``eval_step`` from ``jaxcnn.train``.

The notebooks pass their sizes in (small ones under ``JAXCNN_NOTEBOOK_QUICK=1``, which each
notebook reads once at its top); nothing here reads that switch.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxcnn import data
from jaxcnn.configs.default import get_config
from jaxcnn.models import get_model_for
from jaxcnn.train import (create_train_state, eval_step, make_optimizer, summarize, train_step,
                          variables_of)

REPO = pathlib.Path(__file__).resolve().parent.parent
# The original MNIST files, as the tests find them: $JAXCNN_SHARED_DATA or ../shared/data.
SHARED_DATA = pathlib.Path(os.environ.get("JAXCNN_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclasses.dataclass(frozen=True)
class Digits:
    """Grey 28x28 digit images (uint8 NHWC) with their labels, and where they came from."""

    name: str  # the jaxcnn dataset name, "mnist" or "digits"
    source: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_digits(train_size: int | None = None, test_size: int | None = None) -> Digits:
    """Real MNIST where its original files are in ``SHARED_DATA/mnist``, else the offline digits.

    The first ``train_size`` training and ``test_size`` test images (all when ``None``, or
    when the split is smaller). TFDS prepares the dataset once in its data directory
    (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), outside the repository.
    """
    manual = SHARED_DATA / "mnist"
    if manual.is_dir():
        name, manual_dir = "mnist", str(manual)
        source = f"MNIST, from the original files in {manual}"
    else:
        name, manual_dir = "digits", None
        source = (f"the offline digits (scikit-learn's 8x8 digits drawn at 28x28): no MNIST "
                  f"files at {manual}")
    spec = data.dataset_spec(name, None, manual_dir)  # prepares the dataset the first time
    builder = data.prepared_builder(name, None, manual_dir)

    def read(split: str, size: int | None):  # only the first `size` examples are decoded
        sliced = split if size is None or size >= spec.split_sizes[split] else f"{split}[:{size}]"
        dataset = builder.as_dataset(split=sliced, batch_size=-1, as_supervised=True)
        images, labels = tfds.as_numpy(dataset)
        return np.asarray(images, np.uint8), np.asarray(labels, np.int32)

    digits = Digits(name, source, spec.class_names, *read("train", train_size),
                    *read("test", test_size))
    print(f"data: {source}\n      {len(digits.train_images):,} of {spec.split_sizes['train']:,} "
          f"training and {len(digits.test_images):,} of {spec.split_sizes['test']:,} test images")
    return digits


@dataclasses.dataclass
class Trained:
    """A trained model: its state, one history record per epoch (the fields of a run's
    ``history.json``) and the training loss of every step."""

    model: object
    state: object
    records: list[dict]
    step_losses: np.ndarray

    @property
    def variables(self) -> dict:
        return jax.device_get(variables_of(self.state))


def train(model_name: str, digits: Digits, *, epochs: int, batch_size: int, lr: float = 1e-3,
          seed: int = 0, log: bool = True) -> Trained:
    """Trains registered model ``model_name`` on ``digits`` with Adam at a constant ``lr``.

    Every epoch visits the training images once in a seeded order (full batches only), then
    measures loss and accuracy on the test images, exactly as ``jaxcnn train`` does.
    """
    shape = digits.train_images.shape[1:]
    model = get_model_for(model_name, shape, num_classes=len(digits.class_names))
    config = get_config()
    config.lr, config.schedule = lr, "constant"  # Adam as Kingma and Ba give it
    steps = data.steps_per_epoch(len(digits.train_images), batch_size)
    state = create_train_state(model, shape, make_optimizer(config, epochs * steps), seed)
    step_fn, eval_fn = jax.jit(train_step), jax.jit(eval_step)
    records, step_losses = [], []
    for epoch in range(1, epochs + 1):
        began, sums, losses = time.perf_counter(), None, []
        for batch in data.train_batches(digits.train_images, digits.train_labels, batch_size,
                                        seed, epoch):
            state, batch_sums = step_fn(state, batch)
            sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
            losses.append(batch_sums["loss_sum"] / batch_sums["count"])
        trained = summarize(jax.device_get(sums))
        test = None
        for batch in data.eval_batches(digits.test_images, digits.test_labels, 250):
            batch_sums = eval_fn(state, batch)
            test = batch_sums if test is None else jax.tree.map(jnp.add, test, batch_sums)
        test = summarize(jax.device_get(test))
        step_losses.extend(np.asarray(jax.device_get(losses)).tolist())
        records.append({"epoch": epoch, "train_loss": trained["loss"],
                        "train_accuracy": trained["accuracy"], "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"],
                        "epoch_seconds": time.perf_counter() - began})
        if log:
            r = records[-1]
            print(f"{model_name} epoch {epoch}/{epochs}: train loss {r['train_loss']:.4f} "
                  f"acc {100 * r['train_accuracy']:.2f}%, test loss {r['test_loss']:.4f} "
                  f"acc {100 * r['test_accuracy']:.2f}% ({r['epoch_seconds']:.1f}s)")
    return Trained(model, state, records, np.asarray(step_losses))
