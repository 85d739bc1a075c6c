"""SIGKILLs a real `jaxcnn train` run at random moments, resuming after each, and checks the
final state equals an uninterrupted run's bitwise.

    python benchmarks/kill_and_resume.py [--kills 5] [--epochs 6] [--seed 0]

Each kill lands at a random time after the process starts (imports, data, compile and
training alike); the run saves every 10 steps and at epoch ends, asynchronously. A SIGKILL
gives the process no chance to clean up, so this shows that every committed checkpoint is
usable and that resuming from one reproduces the data order, dropout and optimizer exactly.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np


def train_cmd(workdir, args, resume=False):
    cmd = [str(pathlib.Path(sys.executable).parent / "jaxcnn"), "train", "--workdir", str(workdir),
           "--epochs", str(args.epochs), "--seed", str(args.seed), "--model", args.model,
           "--config.checkpoint_every_steps=10"]
    return cmd + (["--resume"] if resume else [])


def committed(workdir) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) \
        if folder.is_dir() else []


def final_state(workdir):
    from jaxcnn import data
    from jaxcnn.train import loop, rundir
    from jaxcnn.train.checkpoint import Checkpoints

    config = rundir.read_run_config(workdir)
    state = loop.new_state(config, data.dataset_spec(config.dataset))
    checkpoints = Checkpoints(workdir)
    state, _ = loop.restore(checkpoints, state, config.num_classes)
    checkpoints.close()
    return jax.device_get(state.checkpoint_tree())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="keras_cnn", help="default has dropout")
    parser.add_argument("--rng-seed", type=int, default=1234, help="seed of the kill times")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rng = random.Random(args.rng_seed)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kill_resume_"))

    began = time.time()
    subprocess.run(train_cmd(root / "whole", args), check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    whole_seconds = time.time() - began
    print(f"uninterrupted run: {whole_seconds:.1f}s")

    workdir = root / "killed"
    for kill in range(1, args.kills + 1):
        resume = (workdir / "config.json").exists()
        before = committed(workdir)
        proc = subprocess.Popen(train_cmd(workdir, args, resume), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # A random moment while it trains: after 1..3 new committed checkpoints, plus a random
        # fraction of a second (mid-step, mid-save or mid-evaluation alike).
        target, extra = rng.randint(1, 3), rng.uniform(0.0, 1.5)
        while len(set(committed(workdir)) - set(before)) < target and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(extra)
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
        print(f"kill {kill}: SIGKILL {extra:.2f}s after its {target}th new checkpoint"
              f"{' (the run had already finished)' if finished else ''}; "
              f"committed checkpoints now: {committed(workdir)}", flush=True)
    subprocess.run(train_cmd(workdir, args, resume=(workdir / "config.json").exists()),
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours, reference = final_state(workdir), final_state(root / "whole")
    equal = all(np.array_equal(a, b) for a, b in
                zip(jax.tree.leaves(ours), jax.tree.leaves(reference)))
    print(f"final step {int(ours['step'])} vs {int(reference['step'])}; "
          f"parameters, batch statistics and optimizer state bitwise equal: {equal}")
    sys.exit(0 if equal else 1)


if __name__ == "__main__":
    main()
