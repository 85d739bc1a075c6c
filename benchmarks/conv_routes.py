"""XLA:CPU's convolution against jaxcnn's routed one (``jaxcnn/models/conv.py``), per layer.

For convolution shapes of the zoo's networks (batch 128, float32, NHWC), times the forward
pass, the input gradient and the kernel gradient, each jitted alone, best of 5, for
``lax.conv_general_dilated`` and for ``jaxcnn.models.conv.conv_general_dilated``, and prints
milliseconds, GFLOP/s and the route jaxcnn takes (``lax``, ``custom``: the im2col kernel
gradient, ``im2col``: one patch matmul). Whole train steps: ``benchmarks/throughput.py``.

    python benchmarks/conv_routes.py [--batch 128]
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.models.conv import NHWC, _cpu_route, conv_general_dilated

SHAPES = [  # (name, map size, C_in, C_out, kernel, stride, padding)
    ("lenet5 C1", 28, 1, 6, 5, 1, 2),
    ("lenet5 C3", 14, 6, 16, 5, 1, 0),
    ("mnist_cnn conv1", 28, 1, 32, 3, 1, 0),
    ("mnist_cnn conv2", 26, 32, 64, 3, 1, 0),
    ("resnet20 stem", 32, 3, 16, 3, 1, 1),
    ("resnet20 stage 1", 32, 16, 16, 3, 1, 1),
    ("resnet20 stage 3", 8, 64, 64, 3, 1, 1),
    ("resnet50@64 1x1 reduce", 16, 256, 64, 1, 1, 0),
    ("resnet50@64 3x3", 16, 64, 64, 3, 1, 1),
    ("resnet50@64 1x1 expand", 16, 64, 256, 1, 1, 0),
    ("resnet50@64 1x1 stride 2", 16, 256, 128, 1, 2, 0),
    ("resnet50@64 stage 4 3x3", 2, 512, 512, 3, 1, 1),
    ("resnet50@64 stage 4 expand", 2, 512, 2048, 1, 1, 0),
]


def best_ms(fn, *args) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - began)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"JAX {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores, "
          f"batch {args.batch}, load {os.getloadavg()[0]:.2f}")
    print(f"{'layer':28s} {'route':7s} {'pass':7s} {'lax ms':>9s} {'jaxcnn ms':>10s} "
          f"{'lax GF/s':>9s} {'jaxcnn GF/s':>12s}")
    rng = np.random.default_rng(0)
    for name, size, c, o, k, s, p in SHAPES:
        x = jnp.asarray(rng.normal(size=(args.batch, size, size, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, c, o)) * 0.05, jnp.float32)
        pads = ((p, p), (p, p))
        route = _cpu_route(x, w, NHWC, (s, s), pads, (None, None), 1, (False, False, False))
        convs = {impl: (lambda x, w, impl=impl: impl(x, w, (s, s), pads, dimension_numbers=NHWC))
                 for impl in (lax.conv_general_dilated, conv_general_dilated)}
        y = convs[lax.conv_general_dilated](x, w)
        g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
        gflop = 2 * y.size * k * k * c / 1e9
        passes = (("forward", lambda f: (lambda x, w, g: f(x, w))),
                  ("dx", lambda f: (lambda x, w, g: jax.vjp(lambda v: f(v, w), x)[1](g))),
                  ("dw", lambda f: (lambda x, w, g: jax.vjp(lambda v: f(x, v), w)[1](g))))
        for label, make in passes:
            ms = [best_ms(make(f), x, w, g) for f in convs.values()]
            print(f"{name:28s} {route:7s} {label:7s} {ms[0]:9.1f} {ms[1]:10.1f} "
                  f"{gflop / ms[0] * 1e3:9.0f} {gflop / ms[1] * 1e3:12.0f}", flush=True)


if __name__ == "__main__":
    main()
