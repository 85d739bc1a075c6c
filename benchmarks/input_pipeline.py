"""Input pipeline throughput against the training step's own consumption, on MNIST.

Prints images/second for each way of feeding a model (the in-memory device pipeline, the
streaming tf.data pipeline, and the host numpy batches of ``jaxcnn.data.batches``), with and
without augmentation, next to the rate at which a jitted LeNet-5 train step (batch 128, Adam)
consumes images, and the ratio pipeline/step (the pipeline should be at least 5x faster, so
that it never makes the accelerator wait).

MNIST is built from the original files (``--manual-dir``, default ``../shared/data/mnist``)
into ``--data-dir`` (default: TFDS's) the first time.

    python benchmarks/input_pipeline.py [--manual-dir DIR] [--data-dir DIR] [--steps 100]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

import jax
import numpy as np
import optax

from jaxcnn import data
from jaxcnn.models import get_model
from jaxcnn.train import create_train_state, train_step

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A usual MNIST recipe (small affine distortions), and all seven augmentations at once.
AUGMENTS = {"plain": None, "rotate+translate": "rotate:10,translate:2",
            "all 7 augmentations": "crop:2,flip,rotate:10,translate:2,brightness:0.2,"
                                   "contrast:0.2,noise:0.02"}


def rate(batches, steps: int, batch_size: int, warmup: int = 3, repeats: int = 3) -> float:
    """Images/second over ``steps`` batches after ``warmup`` (compilation, tf.data start); the
    best of ``repeats`` runs, which is the least disturbed by other work on the machine."""
    iterator = iter(batches)
    last = None
    for _ in range(warmup):
        last = next(iterator)
    jax.block_until_ready(last)
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(steps):
            last = next(iterator)
        jax.block_until_ready(last)
        best = max(best, steps * batch_size / (time.perf_counter() - began))
    return best


def epochs(pipeline_fn):
    """An endless stream of batches over consecutive epochs."""
    epoch = 1
    while True:
        yield from pipeline_fn(epoch)
        epoch += 1


def step_rate(steps: int, batch_size: int) -> float:
    """Images/second a jitted LeNet-5 train step (Adam) consumes, on one fixed batch."""
    state = create_train_state(get_model("lenet5"), (28, 28, 1), optax.adam(1e-3), 0)
    step = jax.jit(train_step, donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = {"image": jax.device_put(rng.random((batch_size, 28, 28, 1), np.float32)),
             "label": jax.device_put(rng.integers(0, 10, batch_size).astype(np.int32))}

    def steps_forever():
        nonlocal state
        while True:
            state, metrics = step(state, batch)
            yield metrics

    return rate(steps_forever(), steps, batch_size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="batches per measurement")
    args = parser.parse_args(argv)
    size, steps = args.batch_size, args.steps
    common = dict(batch_size=size, data_dir=args.data_dir, manual_dir=args.manual_dir, seed=0)

    consume = step_rate(steps, size)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs); "
          f"MNIST, batch {size}, best of 3 x {steps} batches")
    print(f"{'LeNet-5 train step (consumption)':52s} {consume:12,.0f} images/s")

    rows = []
    for label, augment in AUGMENTS.items():
        for mode in ("memory", "stream"):
            pipeline = data.make_pipeline("mnist", mode=mode, augment=augment, **common)
            rows.append((f"{mode} pipeline, {label}", rate(epochs(pipeline.train_batches),
                                                            steps, size)))
    images, labels = data.load_split("mnist", "train", args.data_dir, args.manual_dir)
    host = epochs(lambda e: data.train_batches(images, labels, size, 0, e))
    rows.append(("host numpy batches (batches.py), plain", rate(host, steps, size)))
    for name, value in rows:
        print(f"{name:52s} {value:12,.0f} images/s   {value / consume:6.1f}x the step")


if __name__ == "__main__":
    main()
