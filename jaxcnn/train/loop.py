"""The fit loop: prepare (validate everything), then train with checkpoints and evaluation.

:func:`prepare` resolves and checks every user input (model, dataset, shapes, config values,
the workdir) without compiling or writing anything; :func:`fit` then trains. A run can stop
at any step and continue exactly: the data order is a function of (seed, epoch), dropout keys
of (seed, step), and a checkpoint holds the state and the partial epoch's metric sums.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxcnn import data
from jaxcnn.configs.loading import validate
from jaxcnn.errors import DivergedError, unknown
from jaxcnn.models import model_info
from jaxcnn.train import history as hist
from jaxcnn.train import rundir, transfer
from jaxcnn.train.builder import build_model
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.optim import make_optimizer
from jaxcnn.train.parallel import DataParallel
from jaxcnn.train.signals import PreemptionGuard
from jaxcnn.train.state import TrainState, create_train_state, loss_scale_for
from jaxcnn.train.steps import eval_step, metric_sums, summarize, train_step


# float16 trains with a dynamic loss scale (jaxcnn.train.state.LossScale).
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass
class Run:
    """A validated run, ready to train: nothing has been compiled or written yet."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    spec: data.DatasetSpec
    resume: bool


@dataclasses.dataclass
class Outcome:
    """What :func:`fit` did: the history, and the signal that stopped it early, if any."""

    records: list
    stopped_by: str | None = None
    step: int = 0


def prepare(config: ml_collections.ConfigDict, workdir: str | None = None,
            resume: bool = False) -> Run:
    """Checks the config, model, dataset, shapes and workdir; raises a JaxCNNError if any is off."""
    validate(config)
    model_info(config.model)  # an unknown model name fails first, before any data access
    spec = data.dataset_spec(config.dataset, config.data_dir or None, config.manual_dir or None)
    if not config.num_classes:
        config.num_classes = spec.num_classes
    model = build_model(config, spec.image_shape)
    data.steps_per_epoch(spec.split_size(config.get("train_split", "train")), config.batch_size)
    spec.split_size(config.get("eval_split", "test"))
    if config.dtype not in COMPUTE_DTYPES:
        raise unknown("dtype", config.dtype, COMPUTE_DTYPES)
    parallel = make_parallel(config)
    parallel.check_batch(config.batch_size)
    parallel.check_batch(config.eval_batch_size, "eval batch size")
    # Tracing init checks the model against the dataset's image shape, with no compile.
    data.parse_augment(config.augment or None)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *spec.input_shape(config.image_size or None))))
    transfer.check(config, shapes["params"])  # init_from, head, freeze/lr_groups patterns
    path = pathlib.Path(workdir) if workdir else rundir.default_workdir(config)
    if resume:
        rundir.check_resume(path, rundir.read_run_config(path), config)
    else:
        rundir.check_new_workdir(path, config)
    return Run(config=config, workdir=path, spec=spec, resume=resume)


def new_state(config: ml_collections.ConfigDict, spec: data.DatasetSpec,
              tx=None) -> TrainState:
    """A fresh state of ``config``'s model; ``tx`` replaces the config's optimizer."""
    shape = spec.input_shape(config.get("image_size") or None)
    model = build_model(config, shape)
    train_size = spec.split_size(config.get("train_split", "train"))
    total_steps = config.epochs * data.steps_per_epoch(train_size, config.batch_size)
    tx = tx or make_optimizer(config, total_steps)
    return create_train_state(model, shape, tx, config.seed,
                              loss_scale=loss_scale_for(config.get("dtype", "float32")))


def make_pipeline(config: ml_collections.ConfigDict, parallel: DataParallel):
    """The run's input pipeline; under ``jit`` its batches are already sharded on the mesh."""
    return data.make_pipeline(
        config.dataset, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        seed=config.seed, data_dir=config.get("data_dir") or None,
        manual_dir=config.get("manual_dir") or None, preprocess=config.get("preprocess", "auto"),
        augment=config.get("augment") or None, mode=config.get("input_mode", "auto"),
        image_size=config.get("image_size") or None, mesh=parallel.mesh,
        train_split=config.get("train_split", "train"),
        eval_splits=(config.get("eval_split", "test"),))


def feeder(parallel: DataParallel):
    """Turns a pipeline batch (global arrays on the mesh) into what the compiled step takes."""
    if parallel.mode == "jit":
        return lambda batch: batch

    def to_pmap(batch):
        local = {k: np.concatenate([np.asarray(s.data) for s in sorted(
                     v.addressable_shards, key=lambda s: s.index[0].start or 0)])
                 for k, v in batch.items()}
        return parallel.put_batch(local)

    return to_pmap


def zero_sums(num_classes: int) -> dict:
    """Metric sums of nothing, with the structure :func:`metric_sums` returns."""
    sums = metric_sums(jnp.zeros((1, num_classes)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,)))
    return jax.tree.map(jnp.zeros_like, sums)


def checkpoint_tree(state: TrainState, epoch_sums: dict) -> dict:
    return {**state.checkpoint_tree(), "epoch_sums": epoch_sums}


def restore(checkpoints: Checkpoints, state: TrainState, num_classes: int,
            best: bool = False) -> tuple[TrainState, dict]:
    """The newest good (or best) checkpoint as ``(state, partial-epoch metric sums)``."""
    tree, _ = checkpoints.restore(checkpoint_tree(state, zero_sums(num_classes)), best=best)
    sums = tree.pop("epoch_sums")
    return state.from_checkpoint_tree(tree), sums


def evaluate(state: TrainState, batches, step_fn=None, feed=None, to_host=None) -> dict:
    """Exact metrics of ``state`` over evaluation ``batches`` (padded and masked)."""
    step_fn = step_fn or jax.jit(eval_step)
    feed = feed or (lambda b: b)
    totals = None
    for batch in batches:
        sums = step_fn(state, feed(batch))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return summarize((to_host or jax.device_get)(totals))


def check_finite(state: TrainState, config: ml_collections.ConfigDict,
                 checkpoints: Checkpoints) -> None:
    """Under the "stop" policy, raises :class:`DivergedError` once a step was non-finite."""
    first = int(state.first_nonfinite_step)
    if config.nonfinite == "stop" and first >= 0:
        checkpoints.wait()
        raise DivergedError(
            f"non-finite loss or gradient norm at step {first + 1}: training stopped; the last "
            f"good checkpoint is step {checkpoints.latest_step()} in {checkpoints.directory} "
            "(lower the learning rate, or pass --config.nonfinite=skip to skip such steps)")


def make_parallel(config: ml_collections.ConfigDict) -> DataParallel:
    return DataParallel(config.parallel, ghost_bn=config.ghost_bn,
                        dtype=COMPUTE_DTYPES[config.dtype], nonfinite=config.nonfinite)


def fit(run: Run, log=print, *, variables: dict | None = None, tx=None) -> Outcome:
    """Trains ``run`` to ``config.epochs`` epochs; returns the history and how it ended.

    Every process of a multi-process run calls this; only process 0 writes the config,
    history, curves and TensorBoard files and prints (checkpoints are written through Orbax's
    multi-process support).

    A new run starts from ``variables`` (``{"params", "batch_stats"}`` of the config's model)
    if given, else from ``config.init_from`` if set (:mod:`jaxcnn.train.transfer`), else from
    the model's initialisation. ``tx`` replaces the optimizer the config names (pass the same
    one again to resume such a run). The per-epoch ``test_*`` metrics are those of
    ``config.eval_split``.
    """
    config, workdir = run.config, run.workdir
    main = jax.process_index() == 0
    log = log if main else (lambda *a, **k: None)
    parallel = make_parallel(config)
    pipeline, feed = make_pipeline(config, parallel), feeder(parallel)
    steps = pipeline.steps_per_epoch
    host_state = new_state(config, run.spec, tx)
    sums = zero_sums(config.num_classes)
    sync("jaxcnn: every process checked its input")  # no process writes before all checked
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(workdir, config)
    sync("jaxcnn: run directory ready")
    checkpoints = Checkpoints(workdir, max_to_keep=config.checkpoint_keep)
    records = []
    if not run.resume or checkpoints.latest_step() is None:
        host_state = transfer.start_from(host_state, config, variables, log)
    if run.resume and checkpoints.latest_step() is None:
        log(f"{workdir} has no checkpoint yet (it stopped before the first): starting at step 0")
    elif run.resume:
        host_state, sums = restore(checkpoints, host_state, config.num_classes)
        records = [r for r in hist.read_history(workdir)
                   if r["epoch"] <= int(host_state.step) // steps]
        log(f"resumed {workdir} at step {int(host_state.step)} (epoch "
            f"{int(host_state.step) // steps}, step {int(host_state.step) % steps} of {steps})")
    state = parallel.put_state(host_state)
    best = max((r.get(config.best_metric, float("-inf")) for r in records), default=float("-inf"))
    jit_train, jit_eval = parallel.train_step(), parallel.eval_step()
    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    writer = hist.TensorBoardWriter(workdir) if main else None
    outcome = Outcome(records)

    def save(step, best_too=False):
        tree = jax.device_get(checkpoint_tree(parallel.get_state(state), parallel.to_host(sums)))
        checkpoints.save(step, tree)
        if best_too:
            checkpoints.save_best(step, tree)

    try:
        with PreemptionGuard() as guard:
            step = int(host_state.step)
            sums = parallel.put_state(sums)
            while step < config.epochs * steps:
                epoch, began, waited = step // steps + 1, time.perf_counter(), 0.0
                batches = iter(pipeline.train_batches(epoch, start_step=step % steps))
                progress = tqdm(total=steps, initial=step % steps, leave=False, file=sys.stderr,
                                desc=f"epoch {epoch}/{config.epochs}", dynamic_ncols=True,
                                disable=not main)
                while True:
                    fetched = time.perf_counter()
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch = feed(batch)
                    waited += time.perf_counter() - fetched
                    progress.update()
                    state, batch_sums = jit_train(state, batch)
                    sums, step = add(sums, batch_sums), step + 1
                    every = config.checkpoint_every_steps
                    if guard.requested or (every and step % every == 0 and step % steps):
                        check_finite(parallel.get_state(state), config, checkpoints)
                        save(step)
                    if guard.requested:
                        checkpoints.wait()
                        log(f"{guard.requested} received: checkpoint saved at step {step}; "
                            f"continue with: jaxcnn train --resume --workdir {workdir}")
                        return dataclasses.replace(outcome, stopped_by=guard.requested, step=step)
                progress.close()
                check_finite(parallel.get_state(state), config, checkpoints)
                train = summarize(parallel.to_host(sums))  # waits for the epoch's steps
                trained = time.perf_counter()
                test = evaluate(state, pipeline.eval_batches(config.get("eval_split", "test")),
                                jit_eval, feed,
                                parallel.to_host)
                record = epoch_record(epoch, train, test, time.perf_counter() - began,
                                      parallel.get_state(state), config)
                record["data_seconds"] = waited
                record["compute_seconds"] = trained - began - waited
                record["eval_seconds"] = time.perf_counter() - trained
                records.append(record)
                log(format_record(record, config.epochs))
                if main:
                    hist.write_history(workdir, records)
                    writer.write(record)
                sums = jax.tree.map(jnp.zeros_like, sums)
                improved = record.get(config.best_metric, float("-inf")) > best
                best = max(best, record.get(config.best_metric, float("-inf")))
                save(step, best_too=improved)
            outcome.step = step
    finally:
        checkpoints.close()
        if writer is not None:
            writer.close()
    if records and main:
        hist.plot_curves(workdir, records, title=f"{config.model} on {config.dataset}")
    return outcome


def sync(name: str) -> None:
    """A barrier across processes (nothing to do in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def epoch_record(epoch: int, train: dict, test: dict, seconds: float, state: TrainState,
                 config: ml_collections.ConfigDict) -> dict:
    record = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
              "test_loss": test["loss"], "test_accuracy": test["accuracy"],
              "epoch_seconds": seconds}
    if "top5_accuracy" in test:
        record["test_top5_accuracy"] = test["top5_accuracy"]
    if config.nonfinite != "stop":
        record["nonfinite_steps_total"] = int(state.nonfinite_count)
    if state.loss_scale is not None:  # float16: the dynamic loss scale at the epoch's end
        record["loss_scale"] = float(state.loss_scale.scale)
    return record


def format_record(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']:3d}/{epochs}  "
            f"train loss {record['train_loss']:.4f} acc {100 * record['train_accuracy']:6.2f}%  "
            f"test loss {record['test_loss']:.4f} acc {100 * record['test_accuracy']:6.2f}%  "
            f"({record["epoch_seconds"]:.1f}s: data {record.get("data_seconds", 0):.1f}s, "
            f"compute {record.get("compute_seconds", 0):.1f}s, eval {record.get("eval_seconds", 0):.1f}s)")


def evaluate_run(workdir: str | pathlib.Path, split: str = "test") -> dict:
    """Restores a run's latest checkpoint and measures it on all of ``split``."""
    workdir = pathlib.Path(workdir)
    config = rundir.read_run_config(workdir)
    spec = data.dataset_spec(config.dataset, config.get("data_dir") or None,
                             config.get("manual_dir") or None)
    spec.split_size(split)
    checkpoints = Checkpoints(workdir)
    try:
        state, _ = restore(checkpoints, new_state(config, spec), config.num_classes)
    finally:
        checkpoints.close()
    parallel = DataParallel("jit", dtype=COMPUTE_DTYPES[config.get("dtype", "float32")],
                            devices=jax.devices()[:1])
    pipeline = make_pipeline(config, parallel)
    metrics = evaluate(state, pipeline.eval_batches(split), parallel.eval_step())
    out = {f"{split}_loss": metrics["loss"], f"{split}_accuracy": metrics["accuracy"],
           "num_examples": metrics["num_examples"]}
    if "top5_accuracy" in metrics:
        out["top5_accuracy"] = metrics["top5_accuracy"]
    return out
