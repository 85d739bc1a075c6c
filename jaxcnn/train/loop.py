"""The fit loop: prepare (validate everything), then train epoch by epoch with checkpoints.

:func:`prepare` resolves and checks every user input (model, dataset, shapes, config values,
the workdir) without compiling or writing anything; :func:`fit` then trains, and
:func:`evaluate_run` measures a finished run's latest checkpoint on a split.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from tqdm.auto import tqdm

from jaxcnn import data
from jaxcnn.configs.loading import validate
from jaxcnn.models import get_model, model_info
from jaxcnn.train import history as hist
from jaxcnn.train import rundir
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.optim import make_optimizer
from jaxcnn.train.state import TrainState, create_train_state
from jaxcnn.train.steps import eval_step, summarize, train_step


@dataclasses.dataclass
class Run:
    """A validated run, ready to train: nothing has been compiled or written yet."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    spec: data.DatasetSpec
    resume: bool

    @property
    def model(self):
        return get_model(self.config.model, num_classes=self.config.num_classes)


def prepare(config: ml_collections.ConfigDict, workdir: str | None = None,
            resume: bool = False) -> Run:
    """Checks the config, model, dataset, shapes and workdir; raises a JaxCNNError if any is off."""
    validate(config)
    model_info(config.model)  # an unknown model name fails first, before any data access
    spec = data.dataset_spec(config.dataset, config.data_dir or None)
    if not config.num_classes:
        config.num_classes = spec.num_classes
    model = get_model(config.model, num_classes=config.num_classes)
    data.steps_per_epoch(spec.split_size("train"), config.batch_size)
    # Tracing init checks the model against the dataset's image shape, with no compile.
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *spec.image_shape)))
    path = pathlib.Path(workdir) if workdir else rundir.default_workdir(config)
    if resume:
        rundir.check_resume(path, rundir.read_run_config(path), config)
    else:
        rundir.check_new_workdir(path, config)
    return Run(config=config, workdir=path, spec=spec, resume=resume)


def new_state(config: ml_collections.ConfigDict, spec: data.DatasetSpec) -> TrainState:
    model = get_model(config.model, num_classes=config.num_classes)
    total_steps = config.epochs * data.steps_per_epoch(spec.split_size("train"), config.batch_size)
    return create_train_state(model, spec.image_shape, make_optimizer(config, total_steps),
                              config.seed)


def evaluate(state: TrainState, images, labels, batch_size: int, step_fn=None) -> dict:
    """Exact metrics of ``state`` over all of ``images``/``labels`` (padded, masked batches)."""
    step_fn = step_fn or jax.jit(eval_step)
    totals = None
    for batch in data.eval_batches(images, labels, batch_size):
        sums = step_fn(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize(jax.device_get(totals))


def fit(run: Run, log=print) -> list[dict]:
    """Trains ``run`` to ``config.epochs`` epochs; returns the history records."""
    config, workdir = run.config, run.workdir
    train_images, train_labels = data.load_split(config.dataset, "train", config.data_dir or None)
    test_images, test_labels = data.load_split(config.dataset, "test", config.data_dir or None)
    state = new_state(config, run.spec)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(workdir, config)
    checkpoints = Checkpoints(workdir, max_to_keep=config.checkpoint_keep)
    start_epoch, records = 0, []
    if run.resume:
        state, start_epoch = checkpoints.restore(state)
        records = [r for r in hist.read_history(workdir) if r["epoch"] <= start_epoch]
        log(f"resumed {workdir} at epoch {start_epoch} (step {int(state.step)})")
    if start_epoch >= config.epochs:
        log(f"nothing to do: the run has {start_epoch} epochs, --epochs is {config.epochs}")
        checkpoints.close()
        return records

    jit_train = jax.jit(train_step, donate_argnums=0)
    jit_eval = jax.jit(eval_step)
    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    writer = hist.TensorBoardWriter(workdir)
    steps = data.steps_per_epoch(len(train_images), config.batch_size)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        began = time.perf_counter()
        totals = None
        batches = data.train_batches(train_images, train_labels, config.batch_size,
                                     config.seed, epoch)
        for batch in tqdm(batches, total=steps, desc=f"epoch {epoch}/{config.epochs}",
                          leave=False, file=sys.stderr, dynamic_ncols=True):
            state, sums = jit_train(state, batch)
            totals = sums if totals is None else add(totals, sums)
        train_metrics = summarize(jax.device_get(totals))
        test_metrics = evaluate(state, test_images, test_labels, config.eval_batch_size, jit_eval)
        record = {"epoch": epoch,
                  "train_loss": train_metrics["loss"], "train_accuracy": train_metrics["accuracy"],
                  "test_loss": test_metrics["loss"], "test_accuracy": test_metrics["accuracy"],
                  "epoch_seconds": time.perf_counter() - began}
        if "top5_accuracy" in test_metrics:
            record["test_top5_accuracy"] = test_metrics["top5_accuracy"]
        records.append(record)
        log(format_record(record, config.epochs))
        hist.write_history(workdir, records)
        writer.write(record)
        checkpoints.save(state, epoch)
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    hist.plot_curves(workdir, records, title=f"{config.model} on {config.dataset}")
    return records


def format_record(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']:3d}/{epochs}  "
            f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:6.2f}%  "
            f"test loss {record['test_loss']:.4f} acc {100 * record['test_accuracy']:6.2f}%  "
            f"({record['epoch_seconds']:.1f}s)")


def evaluate_run(workdir: str | pathlib.Path, split: str = "test") -> dict:
    """Restores a run's latest checkpoint and measures it on all of ``split``."""
    workdir = pathlib.Path(workdir)
    config = rundir.read_run_config(workdir)
    spec = data.dataset_spec(config.dataset, config.data_dir or None)
    spec.split_size(split)
    state = new_state(config, spec)
    checkpoints = Checkpoints(workdir)
    try:
        state, _ = checkpoints.restore(state)
    finally:
        checkpoints.close()
    images, labels = data.load_split(config.dataset, split, config.data_dir or None)
    metrics = evaluate(state, images, labels, config.eval_batch_size)
    out = {f"{split}_loss": metrics["loss"], f"{split}_accuracy": metrics["accuracy"],
           "num_examples": metrics["num_examples"]}
    if "top5_accuracy" in metrics:
        out["top5_accuracy"] = metrics["top5_accuracy"]
    return out
