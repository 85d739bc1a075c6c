"""Training time with asynchronous checkpoints every N steps versus none (resnet20).

    python benchmarks/checkpoint_overhead.py [--steps 300] [--every 100] [--batch 128]

Runs the real train step of ``resnet20`` on 32x32x3 batches, alternating runs with and
without saving through :class:`jaxcnn.train.checkpoint.Checkpoints` (Orbax, async), and
prints the median seconds per run and the overhead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

from jaxcnn.models import get_model
from jaxcnn.train import create_train_state, train_step
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.loop import checkpoint_tree, zero_sums


def run(steps, every, batch, state, step_fn, directory=None):
    checkpoints = Checkpoints(directory) if directory else None
    began = time.perf_counter()
    for i in range(1, steps + 1):
        state, sums = step_fn(state, batch)
        if checkpoints and i % every == 0:
            checkpoints.save(i, jax.device_get(checkpoint_tree(state, zero_sums(10))))
    jax.block_until_ready(state)
    if checkpoints:
        checkpoints.close()  # waits for the last save: counted in the time
    return time.perf_counter() - began, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    state = create_train_state(get_model("resnet20"), (32, 32, 3), optax.adam(1e-3), 0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((args.batch, 32, 32, 3), dtype=np.float32),
             "label": rng.integers(0, 10, args.batch).astype(np.int32)}
    step_fn = jax.jit(train_step, donate_argnums=0)
    _, state = run(3, args.every, batch, state, step_fn)  # compile
    without, with_saves = [], []
    for _ in range(args.repeats):
        seconds, state = run(args.steps, args.every, batch, state, step_fn)
        without.append(seconds)
        with tempfile.TemporaryDirectory() as folder:
            seconds, state = run(args.steps, args.every, batch, state, step_fn, folder)
        with_saves.append(seconds)
    a, b = statistics.median(without), statistics.median(with_saves)
    print(f"resnet20, batch {args.batch}, {args.steps} steps, {args.repeats} alternating repeats")
    print(f"  no checkpoints:              {a:8.2f} s  ({args.steps * args.batch / a:,.0f} images/s)")
    print(f"  checkpoint every {args.every:4d} steps: {b:8.2f} s  "
          f"({args.steps * args.batch / b:,.0f} images/s)")
    print(f"  overhead: {100 * (b - a) / a:+.1f}%")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
