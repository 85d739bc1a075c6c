"""Training throughput of jaxcnn against PyTorch, and the compile time of a ResNet-50 step.

For each model, steady-state training images/second of jaxcnn's real train step
(``jax.jit(train_step, donate_argnums=0)``: forward, loss, backward, Adam update and the
non-finite guard; also measured without the guard, ``nonfinite="ignore"``) and of the same
network in PyTorch (same layers, channels_last, eager, ``torch.optim.Adam``, as many threads
as JAX's CPU client uses), batch 128, float32, on one fixed batch already in memory, so only
the training step is timed. Warm-up is excluded: every participant first compiles and then
trains for ``--warmup`` seconds (at least 4 steps), so that first touches of new memory and
the allocator's growth are over before its repetition length is chosen and timed; every
timed repetition ends with ``block_until_ready``.

PyTorch has no CPU build for Python 3.12 here, while JAX >= 0.12 needs 3.12, so the two
frameworks cannot share a process: PyTorch runs in a persistent worker
(``benchmarks/_torch_side.py serve``) under another interpreter (``--torch-python``,
``$JAXCNN_TORCH_PYTHON``, default ``.venv-torch/bin/python``), driven over a pipe. The
repetitions alternate (jaxcnn, PyTorch, jaxcnn without guard, then the reverse order), and
while one side runs the other is blocked on the pipe, so load drift on a shared machine hits
both sides alike and they never compete for the cores.

Also printed: each model's training FLOPs per image (forward MACs x 2 x 3, the usual
estimate; the MACs come from ``jaxcnn.models.summary``), the achieved FLOP rate and its
fraction of this machine's float32 matmul rate measured in the same run (a jitted square
``jnp`` matmul, best of 6 before the models and 6 after), the 1-minute load average at start and end, and the cold and warm
(persistent compilation cache) compile times of the ``resnet50`` train step, each in a fresh
subprocess (``benchmarks/compile_time.py``).

    python benchmarks/throughput.py [--models mnist_cnn,lenet5,resnet20,resnet50]
        [--batch 128] [--reps 7] [--seconds 2] [--warmup 4] [--no-torch] [--no-compile-time]

ResNet-50 takes 64x64x3 images on CPU (224x224x3 when JAX's default backend is a GPU).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

from _common import (SAME_MALLOC, cpu_times, load, same_malloc_env, serve, steal_share,
                     torch_python)

TORCH_SIDE = pathlib.Path(__file__).resolve().parent / "_torch_side.py"
COMPILE_TIME = pathlib.Path(__file__).resolve().parent / "compile_time.py"
MODELS = ("mnist_cnn", "lenet5", "resnet20", "resnet50")


def input_shape(name: str, gpu: bool) -> tuple[int, int, int]:
    if name == "resnet50":
        return (224, 224, 3) if gpu else (64, 64, 3)
    if name.startswith("resnet") or name.startswith("plain"):
        return (32, 32, 3)
    return (28, 28, 1)


def cpu_threads() -> int:
    """The cores this process may use: what XLA's CPU client sizes its thread pool by."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- the jax side -------------------------------------------------------------------------------


def matmul_rate(n: int = 2048, reps: int = 6, dtype: str = "float32") -> float:
    """Best FLOP/s of a jitted n x n @ n x n ``jnp`` matmul in ``dtype`` (2 n^3 FLOPs)."""
    import jax

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(jax.numpy.matmul)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        began = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - began)
    return 2 * n ** 3 / best


class JaxRunner:
    """jaxcnn's train step on one fixed random batch (``nonfinite`` binds the guard policy,
    ``dtype`` the compute precision: None for float32, ``jnp.bfloat16``...)."""

    def __init__(self, name: str, shape, batch: int, nonfinite: str, dtype=None):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        from jaxcnn.models import get_model
        from jaxcnn.train import create_train_state, train_step

        self.jax = jax
        model = get_model(name)
        self.state = create_train_state(model, shape, optax.adam(1e-3), seed=0)
        self.step = jax.jit(functools.partial(train_step, nonfinite=nonfinite, dtype=dtype),
                            donate_argnums=0)
        rng = np.random.default_rng(0)
        self.batch = {"image": jnp.asarray(rng.random((batch, *shape), np.float32)),
                      "label": jnp.asarray(rng.integers(0, model.num_classes, batch)
                                           .astype(np.int32))}
        self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
        self.num_classes = model.num_classes
        began = time.perf_counter()
        self.run(1)
        self.compile_seconds = time.perf_counter() - began

    def run(self, steps: int) -> float:
        began = time.perf_counter()
        state, batch, metrics = self.state, self.batch, None
        for _ in range(steps):
            state, metrics = self.step(state, batch)
        self.jax.block_until_ready((state, metrics))
        self.state = state
        return time.perf_counter() - began


def setup_jax_runner(req: dict):
    import jax

    runner = JaxRunner(req["model"], tuple(req["shape"]), int(req["batch"]),
                       req.get("nonfinite", "stop"))
    warmup = runner.run(int(req.get("warmup", 3)))
    return runner, {"params": runner.num_params, "num_classes": runner.num_classes,
                    "compile_seconds": runner.compile_seconds, "warmup_seconds": warmup,
                    "jax": jax.__version__}


# --- the workers --------------------------------------------------------------------------------


class Worker:
    """A benchmark worker process, one JSON line each way: PyTorch (``_torch_side.py serve``
    under the torch interpreter) or a jaxcnn variant (this file, ``--jax-serve``, with its own
    ``XLA_FLAGS``)."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()


# --- one model ----------------------------------------------------------------------------------


def steps_for(seconds_per_step: float, target: float) -> int:
    return max(1, round(target / max(seconds_per_step, 1e-9)))


def warm_up(run, seconds: float, min_steps: int = 4) -> float:
    """Trains two steps at a time (``run(n)`` returns their seconds) until ``seconds`` have
    passed and ``min_steps`` have run; returns the last step's seconds. First steps are slow
    (a fresh resnet20 process here: 445-615 ms a step over steps 2-6 while its heap grows
    into new huge pages, 230-300 ms after), which a fixed 2-step warm-up left in the timing."""
    spent, steps = 0.0, 0
    while True:
        took = run(2)
        spent, steps = spent + took, steps + 2
        if spent >= seconds and steps >= min_steps:
            return took / 2


def bench_model(name: str, shape, args, workers: dict, gpu: bool) -> dict:
    """Alternating repetitions of every participant on ``name``; returns images/s per rep.

    Participants: "jaxcnn" (this process), "no guard" (this process, ``nonfinite="ignore"``),
    each jaxcnn ``--variant`` and "PyTorch" (worker processes).
    """
    from jaxcnn.models.summary import summarize

    macs = summarize(name, shape).macs
    row = {"model": name, "shape": shape, "macs": macs, "train_flops": 6 * macs}
    print(f"\n[{name}] input {shape}, batch {args.batch}, load {load()}", flush=True)
    local = {"jaxcnn": JaxRunner(name, shape, args.batch, "stop")}
    if name in args.guard_models.split(","):
        local["no guard"] = JaxRunner(name, shape, args.batch, "ignore")
    row["params"] = local["jaxcnn"].num_params
    print(f"  jaxcnn: {row['params']:,} parameters, first step (compile) "
          f"{local['jaxcnn'].compile_seconds:.1f} s", flush=True)
    steps, remote = {}, {}
    for key, runner in local.items():
        steps[key] = steps_for(warm_up(runner.run, args.warmup), args.seconds)
    for key, worker in workers.items():
        try:
            info = worker.ask(cmd="setup", model=name, shape=list(shape), batch=args.batch,
                              threads=args.threads, num_classes=local["jaxcnn"].num_classes,
                              device="cuda" if gpu else "cpu", warmup=3)
            probe = warm_up(lambda n: worker.ask(cmd="run", steps=n)["seconds"], args.warmup)
        except RuntimeError as err:
            print(f"  {key}: unavailable for {name}: {err}", flush=True)
            continue
        remote[key] = worker
        steps[key] = steps_for(probe, args.seconds)
        if key in ("PyTorch", SAME_MALLOC):
            row["torch_params"] = info["params"]
            print(f"  {key} {info['torch']} (Python {info['python']}, {info['threads']} "
                  f"threads): {info['params']:,} parameters", flush=True)
        else:
            print(f"  {key}: first step (compile) {info['compile_seconds']:.1f} s", flush=True)
    order = list(steps)
    print("  steps a repetition: " + ", ".join(f"{k} {steps[k]}" for k in order), flush=True)
    rates, began = {key: [] for key in order}, cpu_times()
    for rep in range(args.reps):
        rep_began = cpu_times()
        for key in (order if rep % 2 == 0 else order[::-1]):
            if key in local:
                seconds = local[key].run(steps[key])
            else:
                seconds = remote[key].ask(cmd="run", steps=steps[key])["seconds"]
            rates[key].append(steps[key] * args.batch / seconds)
            time.sleep(args.pause)  # let the last one's spinning threads go to sleep
        print("  rep %d: %s; steal %s" % (rep + 1, ", ".join(
            f"{k} {rates[k][-1]:,.0f}" for k in order), steal_share(rep_began)), flush=True)
    row["rates"], row["steal"] = rates, steal_share(began)
    print(f"  CPU time stolen by the host during the repetitions: {row['steal']}", flush=True)
    del local
    return row


# --- report -------------------------------------------------------------------------------------


def spread(values) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def paired_ratio(rates: dict, other: str) -> str:
    """jaxcnn's images/s over ``other``'s, repetition by repetition (both ran within seconds
    of each other, so a drift in the machine's speed between repetitions cancels): median
    (min-max)."""
    if other not in rates:
        return "n/a"
    ratios = [mine / theirs for mine, theirs in zip(rates["jaxcnn"], rates[other])]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def report(rows, peak: float) -> None:
    print("\nSteady-state training throughput, images/s: median (min-max) of the repetitions")
    keys = []
    for row in rows:
        keys += [k for k in row["rates"] if k not in keys and k not in ("PyTorch", SAME_MALLOC)]
    keys += [k for k in ("PyTorch", SAME_MALLOC) if any(k in row["rates"] for row in rows)]
    head = f"{'model':10s} {'input':>9s} {'GFLOP/img':>9s} " + " ".join(
        f"{k:>21s}" for k in keys) + (f" {'jax/torch':>9s} {'paired':>16s} {'same-malloc':>11s}"
                                     f" {'guard':>6s}")
    print(head)
    print("-" * len(head))
    for row in rows:
        r = row["rates"]
        med = {k: statistics.median(v) for k, v in r.items()}
        cells = [spread(r[k]) if k in r else "n/a" for k in keys]
        ratio = f"{med['jaxcnn'] / med['PyTorch']:.2f}" if "PyTorch" in med else "n/a"
        same = f"{med['jaxcnn'] / med[SAME_MALLOC]:.2f}" if SAME_MALLOC in med else "n/a"
        guard = (f"{(med['no guard'] / med['jaxcnn'] - 1) * 100:+.0f}%" if "no guard" in med
                 else "n/a")
        shape = "x".join(str(n) for n in row["shape"])
        print(f"{row['model']:10s} {shape:>9s} {row['train_flops'] / 1e9:9.4f} "
              + " ".join(f"{c:>21s}" for c in cells)
              + f" {ratio:>9s} {paired_ratio(r, 'PyTorch'):>16s} {same:>11s} {guard:>6s}")
    print("\njax/torch: jaxcnn's median images/s over PyTorch's; paired: the ratio of each "
          "repetition's\npair, median (min-max); same-malloc: over PyTorch's "
          "with jaxcnn's malloc settings\n(--torch-same-malloc). guard: what the non-finite "
          "guard of train_step costs,\n(no-guard images/s) / (jaxcnn images/s) - 1.")
    print("CPU time stolen by the host (other guests) during the repetitions: " + ", ".join(
        f"{row['model']} {row['steal']}" for row in rows))
    for key in keys:
        if key not in ("jaxcnn", "no guard", "PyTorch", SAME_MALLOC):
            print(f"variant {key!r}: jaxcnn with XLA_FLAGS={VARIANTS[key]!r}")
    print(f"\nAchieved training FLOP rate (6 x forward MACs x images/s) against the measured "
          f"float32 matmul rate, {peak / 1e9:.0f} GFLOP/s:")
    for row in rows:
        parts = []
        for key in row["rates"]:
            rate = statistics.median(row["rates"][key]) * row["train_flops"]
            parts.append(f"{key} {rate / 1e9:.1f} GFLOP/s ({rate / peak:.1%})")
        print(f"  {row['model']:10s} " + ", ".join(parts))
    print("Parameters (jaxcnn / PyTorch): " + ", ".join(
        f"{row['model']} {row['params']:,} / {row.get('torch_params', 0):,}" for row in rows))


VARIANTS: dict[str, str] = {}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="target length of one timed repetition (at least one step)")
    parser.add_argument("--warmup", type=float, default=4.0,
                        help="seconds each participant trains before it is timed")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds of rest between repetitions")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch's thread count (default: the cores JAX's CPU client uses)")
    parser.add_argument("--torch-python", default=None,
                        help="interpreter with torch (default: $JAXCNN_TORCH_PYTHON, else "
                             ".venv-torch/bin/python)")
    parser.add_argument("--guard-models", default="mnist_cnn,lenet5,resnet20",
                        help="models also timed without the non-finite guard")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=XLA_FLAGS",
                        help="also time jaxcnn in a worker process with these XLA_FLAGS "
                             "(repeatable), alternating with the others")
    parser.add_argument("--torch-same-malloc", action="store_true",
                        help="also time PyTorch with the glibc malloc settings that jaxcnn "
                             "applies to its own process (jaxcnn.allocator)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile-time", action="store_true")
    parser.add_argument("--jax-serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.jax_serve:
        serve(setup_jax_runner)
        return

    print(f"load average (1, 5, 15 min) at start: {load()}", flush=True)
    import jaxcnn  # first: its malloc settings must precede JAX's threads (jaxcnn.allocator)
    import jax

    gpu = jax.default_backend() == "gpu"
    args.threads = args.threads or cpu_threads()
    print(f"JAX {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"Python {platform.python_version()}, {cpu_threads()} cores; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jaxcnn's malloc settings: "
          f"{jaxcnn.malloc_tuning()}")
    print("jaxcnn and PyTorch run in separate processes, alternately (never at the same time): "
          "PyTorch has no CPU build for Python 3.12 here and JAX 0.12 needs 3.12, so PyTorch "
          "runs under its own interpreter as a worker driven over a pipe.")
    peak = matmul_rate()
    print(f"float32 matmul rate (jitted 2048x2048 jnp.matmul, best of 6): "
          f"{peak / 1e9:.0f} GFLOP/s", flush=True)

    workers = {}
    for spec in args.variant:
        label, _, flags = spec.partition("=")
        VARIANTS[label] = flags
        env = dict(os.environ, XLA_FLAGS=flags)
        workers[label] = Worker([sys.executable, __file__, "--jax-serve"], env=env)
    if not args.no_torch:
        python = torch_python(args.torch_python)
        if os.path.exists(python):
            workers["PyTorch"] = Worker([python, str(TORCH_SIDE), "serve"])
            print(f"PyTorch worker: {python} {TORCH_SIDE.name} serve, "
                  f"torch.set_num_threads({args.threads})")
            if args.torch_same_malloc:
                env = same_malloc_env()
                workers[SAME_MALLOC] = Worker([python, str(TORCH_SIDE), "serve"], env=env)
                print(f"{SAME_MALLOC!r} worker: the same, with " + " ".join(
                    f"{k}={v}" for k, v in env.items()
                    if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"))
        else:
            print(f"no PyTorch interpreter at {python}; pass --torch-python or set "
                  "$JAXCNN_TORCH_PYTHON (jaxcnn only)")
    rows = []
    try:
        for name in args.models.split(","):
            rows.append(bench_model(name, input_shape(name, gpu), args, workers, gpu))
    finally:
        for worker in workers.values():
            worker.close()
    # Measured again after the models: a busy second at the start must not set the reference.
    again = matmul_rate()
    print(f"\nfloat32 matmul rate again at the end: {again / 1e9:.0f} GFLOP/s; the shares below "
          f"use the higher of the two", flush=True)
    report(rows, max(peak, again))
    if not args.no_compile_time:
        subprocess.run([sys.executable, str(COMPILE_TIME), "--batch", str(args.batch)],
                       check=False)
    print(f"\nload average (1, 5, 15 min) at end: {load()}")


if __name__ == "__main__":
    main()
