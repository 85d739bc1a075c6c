"""Which oneDNN kernel computes a convolution's input gradient: oneDNN's first choice against
the one ``jaxcnn/native/onednn_conv.cc`` takes, per layer, side by side.

For strided layers and layers of at most 32 input channels, ``onednn_conv.cc`` passes over
oneDNN's brgemm-based first choice for its direct JIT kernel of the same instruction set.
This script times ``jaxcnn.native.conv.input_gradient`` (one FFI call, batch 128, float32) in
two worker processes, one started with ``JAXCNN_ONEDNN_FIRST_CHOICE=1`` (oneDNN's choice
everywhere), alternating between them several rounds per layer, and prints each one's
kernel, the median milliseconds and the paired ratio (jaxcnn / first choice; below 1 is
faster). Layers of more channels at stride 1 are controls: the same kernel on both sides.
Whole train steps: ``benchmarks/throughput.py``.

    python benchmarks/input_gradient_kernels.py [--rounds 7] [--calls 10]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPES = [  # (name, map size, C_in, C_out, kernel, stride, padding (top/left, bottom/right))
    ("resnet20 stage 1 3x3", 32, 16, 16, 3, 1, (1, 1)),
    ("resnet20 16 -> 32 3x3 /2", 32, 16, 32, 3, 2, (0, 1)),
    ("resnet20 32 -> 64 3x3 /2", 16, 32, 64, 3, 2, (0, 1)),
    ("mnist_cnn conv2 5x5", 24, 20, 40, 5, 1, (0, 0)),
    ("Keras MNIST example conv2 3x3", 26, 32, 64, 3, 1, (0, 0)),
    ("lenet5 C5 5x5", 5, 16, 120, 5, 1, (0, 0)),
    ("resnet50@64 3x3 /2", 16, 128, 128, 3, 2, (0, 1)),
    ("resnet50@64 1x1 /2 projection", 16, 256, 512, 1, 2, (0, 0)),
    ("resnet50@64 3x3 (control)", 16, 64, 64, 3, 1, (1, 1)),
    ("resnet50@64 1x1 reduce (control)", 16, 256, 64, 1, 1, (0, 0)),
]
FIRST_CHOICE = "JAXCNN_ONEDNN_FIRST_CHOICE"


class LayerRunner:
    """One layer's input gradient, jitted, on fixed random operands."""

    def __init__(self, batch: int, size: int, c: int, o: int, k: int, stride: int,
                 padding: tuple[int, int]):
        import jax
        import jax.numpy as jnp
        from jaxcnn.native import conv as onednn

        pads = (tuple(padding), tuple(padding))
        x_shape, w_shape = (batch, size, size, c), (k, k, c, o)
        y_shape = onednn.output_shape(x_shape, w_shape, (stride, stride), pads)
        rng = np.random.default_rng(0)
        self.g = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
        self.w = jnp.asarray(rng.normal(size=w_shape) * 0.05, jnp.float32)
        self.fn = jax.jit(lambda g, w: onednn.input_gradient(g, w, x_shape, (stride, stride),
                                                             pads))
        self.kernel = onednn.implementation("input_gradient", x_shape, w_shape,
                                            (stride, stride), pads)
        self.block = jax.block_until_ready
        self.block(self.fn(self.g, self.w))

    def run(self, calls: int) -> float:
        began = time.perf_counter()
        for _ in range(calls):
            out = self.fn(self.g, self.w)
        self.block(out)
        return time.perf_counter() - began


def worker() -> None:
    from _common import serve
    from jaxcnn.native import native_status

    status = native_status()
    if not status.available:
        raise SystemExit(f"the native library is not available: {status.reason}")

    def setup(req):
        runner = LayerRunner(*req["layer"])
        return runner, {"kernel": runner.kernel}

    serve(setup)


def ask(proc: subprocess.Popen, request: dict) -> dict:
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"a worker ended early (exit code {proc.wait()})")
    reply = json.loads(line)
    if "error" in reply:
        raise SystemExit(f"a worker failed: {reply['error']}")
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per layer")
    parser.add_argument("--calls", type=int, default=10, help="calls timed per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    here = os.path.dirname(os.path.abspath(__file__))
    sides = {}
    for side, first_choice in (("first choice", "1"), ("jaxcnn", "0")):
        env = dict(os.environ, **{FIRST_CHOICE: first_choice})
        sides[side] = subprocess.Popen([sys.executable, __file__, "--worker"], cwd=here,
                                       env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
    print(f"batch {args.batch}, {args.rounds} alternating rounds of {args.calls} calls, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'layer':34} {'oneDNN first choice':>43} {'ms':>7} {'jaxcnn':>19} {'ms':>7} "
          f"{'ratio':>6}")
    try:
        for name, size, c, o, k, stride, padding in SHAPES:
            layer = [args.batch, size, c, o, k, stride, padding]
            kernels = {side: ask(p, {"cmd": "setup", "layer": layer})["kernel"]
                       for side, p in sides.items()}
            ms = {side: [] for side in sides}
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                for side in order:
                    seconds = ask(sides[side], {"cmd": "run", "steps": args.calls})["seconds"]
                    ms[side].append(seconds / args.calls * 1e3)
            first, ours = (np.array(ms[side]) for side in sides)
            print(f"{name:34} {kernels['first choice']:>43} {np.median(first):7.2f} "
                  f"{kernels['jaxcnn']:>19} {np.median(ours):7.2f} "
                  f"{np.median(ours / first):6.2f}", flush=True)
    finally:
        for p in sides.values():
            p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            p.stdin.close()
            p.wait()


if __name__ == "__main__":
    main()
