"""Training time with asynchronous checkpoints every N steps versus none (resnet20).

    python benchmarks/checkpoint_overhead.py [--steps 250] [--every 100] [--batch 16] [--repeats 3]

Runs the real train step of ``resnet20`` on 32x32x3 batches for ``--steps`` steps (an
"epoch" here; 250 = saves at 100 and 200, the last one finishing while training goes on, as
an epoch-end save does during the next epoch), alternating runs without checkpoints and runs
saving through :class:`jaxcnn.train.checkpoint.Checkpoints` (Orbax, asynchronous) every
``--every`` steps as the fit loop does: the state copied to the host, then handed to Orbax,
which writes it in a background thread while training goes on. A run's time includes
waiting for its last save.
Prints the median time per epoch of each configuration, the overhead, and where the time on
the training thread went in the saving runs (the host copy, waiting for the previous save and
writing its manifest, Orbax's synchronous part; "queued steps" is the wait for the steps JAX
dispatched ahead, which is training time moved, not checkpointing cost).
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

PARTS = ("queued steps", "host copy", "wait + manifest", "orbax save call", "final wait")


def run(steps, every, batch, state, step_fn, directory=None):
    """``steps`` train steps, saving every ``every`` if ``directory``; returns
    ``(seconds, cpu_seconds, state, {part: seconds on the training thread})``."""
    checkpoints = Checkpoints(directory) if directory else None
    parts = dict.fromkeys(PARTS, 0.0)
    sums = zero_sums(10)
    began, cpu = time.perf_counter(), time.process_time()
    for i in range(1, steps + 1):
        state, _ = step_fn(state, batch)
        if checkpoints and i % every == 0:
            t0 = time.perf_counter()
            jax.block_until_ready(state)  # (the steps dispatched ahead: training, not saving)
            t1 = time.perf_counter()
            tree = jax.device_get(checkpoint_tree(state, sums))
            t2 = time.perf_counter()
            checkpoints.wait()
            t3 = time.perf_counter()
            checkpoints.save(i, tree)
            t4 = time.perf_counter()
            for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[part] += seconds
    jax.block_until_ready(state)
    if checkpoints:
        t0 = time.perf_counter()
        checkpoints.close()  # waits for the last save: counted in the time
        parts["final wait"] += time.perf_counter() - t0
    return time.perf_counter() - began, time.process_time() - cpu, state, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="steps per run (an 'epoch')")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    state = create_train_state(get_model("resnet20"), (32, 32, 3), optax.adam(1e-3), 0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((args.batch, 32, 32, 3), dtype=np.float32),
             "label": rng.integers(0, 10, args.batch).astype(np.int32)}
    step_fn = jax.jit(train_step, donate_argnums=0)
    with tempfile.TemporaryDirectory() as folder:  # compile, and warm Orbax up
        _, _, state, _ = run(2, 1, batch, state, step_fn, folder)
    without, with_saves, parts, cpu = [], [], [], {False: [], True: []}
    for repeat in range(args.repeats):
        seconds, used, state, _ = run(args.steps, args.every, batch, state, step_fn)
        without.append(seconds)
        cpu[False].append(used)
        with tempfile.TemporaryDirectory() as folder:
            seconds, used, state, blocking = run(args.steps, args.every, batch, state, step_fn,
                                                 folder)
        with_saves.append(seconds)
        cpu[True].append(used)
        parts.append(blocking)
        print(f"  repeat {repeat + 1}: none {without[-1]:7.2f} s, every {args.every}: "
              f"{with_saves[-1]:7.2f} s", flush=True)
    a, b = statistics.median(without), statistics.median(with_saves)
    saves = args.steps // args.every
    print(f"resnet20, batch {args.batch}, {args.steps} steps per epoch, {args.repeats} "
          "alternating repeats, medians:")
    print(f"  no checkpoints:              {a:8.2f} s per epoch "
          f"({args.steps * args.batch / a:,.0f} images/s)")
    print(f"  checkpoint every {args.every:4d} steps: {b:8.2f} s per epoch "
          f"({args.steps * args.batch / b:,.0f} images/s, {saves} saves)")
    paired = [100 * (y - x) / x for x, y in zip(without, with_saves)]
    print(f"  overhead: {100 * (b - a) / a:+.1f}% between the medians; "
          f"{statistics.median(paired):+.1f}% the median of each repeat's pair ("
          + ", ".join(f"{p:+.1f}%" for p in paired) + ")")
    print("  training thread blocked per save (median over repeats): " + ", ".join(
        f"{p} {1000 * statistics.median(r[p] for r in parts) / max(saves, 1):.0f} ms"
        for p in PARTS))
    c0, c1 = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"  CPU time of the process (all threads, less sensitive to other load): "
          f"{c0:.1f} s vs {c1:.1f} s per epoch, {100 * (c1 - c0) / c0:+.1f}%")
    blocked = statistics.median(sum(r[p] for p in PARTS[1:]) for r in parts)
    print(f"  saving's own blocking time: {blocked:.2f} s per epoch = {100 * blocked / a:.1f}% of "
          "the epoch without checkpoints (the rest of the difference: the background writer "
          "sharing the CPU, and noise)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
