"""Two processes on localhost (gloo), 2 CPU devices each, train LeNet-5 on MNIST; so does one
process with one device (or ``--single-devices 4``: four, the same global mesh) on the same
global batches. Prints one JSON report:

    python benchmarks/multiprocess_mnist.py [--epochs 1] [--batch-size 32] [--max-steps N] \\
        [--single-devices 1] [--manual-dir ../shared/data/mnist] [--data-dir DIR]

* ``identical_across_processes``: the final parameters of process 0 and process 1 (each read
  from its own devices, every local replica checked equal) are bitwise equal, with SHA-256s;
* ``rel_diff_vs_single``: ``|p_two - p_one| / |p_one|`` over the whole parameter vector;
* ``writes``: the files and folders each process created, renamed or deleted under the run
  directory through Python, recorded with an audit hook (``sys.addaudithook``); process 1's
  list must be empty. Orbax's array data goes through tensorstore (C++), out of the hook's
  sight: ``per_process_entries`` lists any path of the run directory named after process 1.

Each process runs the real ``jaxcnn train`` command (:func:`jaxcnn.cli.main`) through
``--worker``, which records the writes and dumps the final parameters outside the run
directory. ``--max-steps N`` makes every epoch of every run the first N global batches of
that epoch (then evaluation and checkpoints as usual): tests/test_parallel.py runs this with a
few steps per epoch, and ``--checkpoint-every`` adds saves within epochs.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WRITE_EVENTS = {"os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "os.symlink",
                "os.link", "os.truncate", "shutil.rmtree", "shutil.move"}


def record_writes(root: pathlib.Path, log: list) -> None:
    """Appends ``"event path"`` to ``log`` for every Python-level change under ``root``."""
    root_text = str(root.resolve())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under(path) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False
        return os.path.abspath(os.fspath(path)).startswith(root_text)

    def hook(event, args):
        if event == "open" and args and under(args[0]):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                    isinstance(flags, int) and flags & write_flags):
                log.append(f"open-for-writing {args[0]}")
        elif event in WRITE_EVENTS and args and any(under(a) for a in args[:2]):
            log.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def worker(args, train_args: list[str]) -> None:
    """One process of the run: ``jaxcnn train`` with recording, then a dump of its state."""
    writes: list[str] = []
    record_writes(pathlib.Path(args.workdir), writes)
    import jax
    import numpy as np

    from jaxcnn.cli import main
    from jaxcnn.train import parallel

    last = {}
    get_state = parallel.DataParallel.get_state

    def capture(self, state):
        last["state"], last["mode"] = state, self.mode
        return get_state(self, state)

    parallel.DataParallel.get_state = capture
    if args.max_steps:
        limit_steps(args.max_steps)
    began = time.perf_counter()
    code = main(["train", "--workdir", args.workdir, *train_args])
    seconds = time.perf_counter() - began
    params, replicas_equal = {}, True
    for path, leaf in jax.tree_util.tree_leaves_with_path(last["state"].params):
        # One full copy per local device (under pmap with a leading axis of 1).
        copies = [np.asarray(s.data) for s in leaf.addressable_shards]
        if last["mode"] == "pmap":
            copies = [c[0] for c in copies]
        replicas_equal &= all(np.array_equal(copies[0], c) for c in copies[1:])
        params[jax.tree_util.keystr(path)] = copies[0]
    np.savez(args.dump, **params)
    digest = hashlib.sha256(b"".join(params[k].tobytes() for k in sorted(params))).hexdigest()
    pathlib.Path(args.dump).with_suffix(".json").write_text(json.dumps({
        "exit_code": code, "process_index": jax.process_index(), "seconds": seconds,
        "local_devices": len(jax.local_devices()), "global_devices": jax.device_count(),
        "local_replicas_equal": bool(replicas_equal), "sha256": digest, "writes": writes}))


def limit_steps(count: int) -> None:
    """Makes every pipeline hand out at most ``count`` training batches per epoch."""
    from jaxcnn import data

    make_pipeline = data.make_pipeline

    def limited(*args, **kwargs):
        pipeline = make_pipeline(*args, **kwargs)
        pipeline.steps_per_epoch = min(count, pipeline.steps_per_epoch)
        train_batches = pipeline.train_batches

        def batches(epoch, start_step=0):
            return itertools.islice(train_batches(epoch, start_step),
                                    pipeline.steps_per_epoch - start_step)

        pipeline.train_batches = batches
        return pipeline

    data.make_pipeline = limited


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def launch(workdir, dump, train_args, max_steps=0):
    cmd = [sys.executable, __file__, "--worker", "--workdir", str(workdir), "--dump", str(dump),
           "--max-steps", str(max_steps), "--", *train_args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc, timeout):
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"a process failed (exit {proc.returncode}):\n{out}\n{err[-4000:]}")
    return out


def gloo_log(line: str) -> bool:
    """Whether a printed line is gloo's own connection log ("[Gloo] Rank 1 is connected to 3
    peer ranks. Expected number of connected peer ranks is : 3"), which another thread's
    write can split across two lines."""
    return line.startswith("[Gloo]") or "connected peer ranks is" in line


def driver(args) -> dict:
    import numpy as np

    from jaxcnn.data import dataset_spec

    folder = pathlib.Path(args.out or tempfile.mkdtemp(prefix="multiprocess_mnist_"))
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir or str(folder / "tensorflow_datasets")
    began = time.perf_counter()
    dataset_spec("mnist", data_dir, args.manual_dir)  # built once, before the processes read it
    prepare_seconds = time.perf_counter() - began
    train = ["--model", "lenet5", "--dataset", "mnist", "--data-dir", data_dir, "--manual-dir",
             args.manual_dir, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--parallel", args.parallel,
             f"--config.checkpoint_every_steps={args.checkpoint_every}"]
    two, one = folder / "two_processes", folder / "one_process"
    port = free_port()
    procs = [launch(two, folder / f"process{i}.npz",
                    [*train, "--num-cpu-devices", "2", "--coordinator", f"localhost:{port}",
                     "--num-processes", "2", "--process-id", str(i)], args.max_steps)
             for i in range(2)]
    printed = [finish(p, args.timeout) for p in procs]
    single = ["--num-cpu-devices", str(args.single_devices)] if args.single_devices > 1 else []
    finish(launch(one, folder / "single.npz", [*train, *single], args.max_steps), args.timeout)

    info = {n: json.loads((folder / f"{n}.json").read_text())
            for n in ("process0", "process1", "single")}
    arrays = {n: np.load(folder / f"{n}.npz") for n in info}
    keys = sorted(arrays["single"].files)
    flat = {n: np.concatenate([np.ravel(arrays[n][k]) for k in keys]) for n in arrays}
    history = {n: json.loads((d / "history.json").read_text()) for n, d in
               (("two_processes", two), ("one_process", one))}
    entries = sorted(str(p.relative_to(two)) for p in two.rglob("*"))
    return {
        "epochs": args.epochs, "batch_size": args.batch_size, "parallel": args.parallel,
        "steps_per_epoch": args.max_steps or 60000 // args.batch_size,
        "prepare_seconds": round(prepare_seconds, 1),
        "seconds": {n: round(info[n]["seconds"], 1) for n in info},
        "devices": {n: [info[n]["local_devices"], info[n]["global_devices"]] for n in info},
        "local_replicas_equal": {n: info[n]["local_replicas_equal"] for n in info},
        "sha256": {n: info[n]["sha256"] for n in info},
        "identical_across_processes": bool(np.array_equal(flat["process0"], flat["process1"])),
        "rel_diff_vs_single": float(np.linalg.norm(flat["process0"] - flat["single"])
                                    / np.linalg.norm(flat["single"])),
        "max_abs_diff_vs_single": float(np.abs(flat["process0"] - flat["single"]).max()),
        "test_accuracy": {n: [r["test_accuracy"] for r in history[n]] for n in history},
        "train_loss": {n: [r["train_loss"] for r in history[n]] for n in history},
        "checkpoints": sorted(p.name for p in (two / "checkpoints").iterdir()),
        "writes": {n: info[n]["writes"] for n in ("process0", "process1")},
        "per_process_entries": [e for e in entries if "process_1" in e or "process1" in e],
        "printed_by_process1": [l for l in printed[1].splitlines() if not gloo_log(l)],
        "run_directory": str(two),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--parallel", default="jit", help="jit or pmap")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="train on the first N batches of each epoch only (0: all)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also checkpoint every N steps (0: at epoch ends only)")
    parser.add_argument("--manual-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: a new one)")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a new one)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--single-devices", type=int, default=1,
                        help="CPU devices of the one-process reference run (4: the same "
                             "global mesh as the two processes' 2 x 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.worker:
        worker(args, rest)
        return
    print(json.dumps(driver(args), indent=1))


if __name__ == "__main__":
    main()
