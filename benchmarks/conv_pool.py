"""A convolution's bias, ReLU and max pool: XLA:CPU's fusions against jaxcnn's native kernel.

For the conv -> ReLU -> 2x2 max-pool stages of the zoo (``jaxcnn/models/conv_pool.py``), times
``max_pool(relu(z + bias), 2)`` alone and with its gradient with respect to ``z`` and ``bias``,
each jitted, median of 7 repetitions, for XLA's expression and for the native kernel
(``jaxcnn/native/bias_relu_max_pool.cc``), and prints milliseconds and the ratio. Whole train
steps: ``benchmarks/throughput.py``.

    python benchmarks/conv_pool.py [--repeat 200]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.models.conv_pool import _bias_relu_max_pool_native, bias_relu_max_pool_xla
from jaxcnn.native import native_status

SHAPES = [  # (name, z's shape N x H x W x C)
    ("lenet5 C1, batch 128", (128, 28, 28, 6)),
    ("lenet5 C3, batch 128", (128, 10, 10, 16)),
    ("keras_cnn conv2, batch 128", (128, 24, 24, 32)),
    ("vgg block 1 at 112x112, batch 16", (16, 112, 112, 64)),
    ("vgg block 3 at 56x56, batch 16", (16, 56, 56, 256)),
]


def forward_and_gradients(fn, z, bias, dy):
    """The pool's output and its gradients (returning the output keeps the forward pass)."""
    y, vjp = jax.vjp(lambda z, b: fn(z, b, 2), z, bias)
    return y, vjp(dy)


def median_ms(fn, args, repeat: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(7):
        began = time.perf_counter()
        for _ in range(repeat):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - began) / repeat * 1e3)
    return float(np.median(times))


def kernel_benchmark_args(doc: str, repeat: int) -> argparse.Namespace:
    """The command line of a native-kernel benchmark (``--repeat``, calls per repetition),
    after checking that the native library is there."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=repeat, help="calls per repetition")
    args = parser.parse_args()
    status = native_status()
    if not status.available:
        raise SystemExit(f"the native library is not available: {status.reason}")
    return args


def main() -> None:
    args = kernel_benchmark_args(__doc__, 200)
    rng = np.random.default_rng(0)
    print(f"{'layer':34} {'XLA fwd':>8} {'native':>8} {'ratio':>6} {'XLA f+b':>8} "
          f"{'native':>8} {'ratio':>6}   (ms)")
    for name, shape in SHAPES:
        z = jnp.asarray(rng.normal(size=shape), jnp.float32)
        bias = jnp.asarray(rng.normal(size=shape[-1]) * 0.1, jnp.float32)
        dy = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])),
                         jnp.float32)
        repeat = max(1, args.repeat * 602_112 // int(np.prod(shape)))  # ~equal time per shape
        row = []
        for fn in (bias_relu_max_pool_xla, _bias_relu_max_pool_native):
            forward = jax.jit(lambda z, b, fn=fn: fn(z, b, 2))
            both = jax.jit(lambda z, b, fn=fn: forward_and_gradients(fn, z, b, dy))
            row.append((median_ms(forward, (z, bias), repeat), median_ms(both, (z, bias), repeat)))
        (xf, xb), (nf, nb) = row
        print(f"{name:34} {xf:8.3f} {nf:8.3f} {xf / nf:6.2f} {xb:8.3f} {nb:8.3f} {xb / nb:6.2f}")


if __name__ == "__main__":
    main()
