"""BatchNorm + (residual +) ReLU in training: oneDNN's BatchNorm with XLA's fusions around it
against jaxcnn's one kernel each way.

For the BatchNorm layers of the zoo's ResNets (``jaxcnn/models/resnet.py``: a block's
``relu(bn(y) + shortcut)`` and the conv -> BN -> ReLU stages), times ``relu(bn(x) [+ r])``
alone and with its gradients with respect to ``x``, ``scale``, ``shift`` [and ``r``], each
jitted, median of 7 repetitions: oneDNN's batch normalization followed by XLA's add and ReLU
(what ran before), and jaxcnn's kernel (``jaxcnn/native/batch_norm_relu.cc``); prints
milliseconds and the ratio. Whole train steps: ``benchmarks/throughput.py``.

    python benchmarks/batch_norm_relu.py [--repeat 100]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from conv_pool import kernel_benchmark_args, median_ms
from jaxcnn.models.batch_norm import _NATIVE_TAIL, _epilogue, _normalize_onednn

EPSILON = 1e-5
SHAPES = [  # (name, x's shape N x H x W x C)
    ("resnet20 stage 1, batch 128", (128, 32, 32, 16)),
    ("resnet20 stage 2, batch 128", (128, 16, 16, 32)),
    ("resnet20 stage 3, batch 128", (128, 8, 8, 64)),
    ("resnet50@64 stage 1 reduce", (128, 16, 16, 64)),
    ("resnet50@64 stage 1 expand", (128, 16, 16, 256)),
]


def onednn_then_xla(x, scale, shift, *residual):
    y, mean, variance = _normalize_onednn(x, scale, shift, EPSILON)
    return _epilogue(y, residual[0] if residual else None, True), mean, variance


def native(x, scale, shift, *residual):
    return _NATIVE_TAIL[bool(residual)](EPSILON, x, scale, shift, *residual)


def forward_and_gradients(fn, dy, *args):
    """The output and all gradients (returning the output keeps the forward pass)."""
    y, vjp = jax.vjp(lambda *a: fn(*a)[0], *args)
    return y, vjp(dy)


def main() -> None:
    args = kernel_benchmark_args(__doc__, 100)
    rng = np.random.default_rng(0)
    print(f"{'layer':30} {'residual':>8} {'old fwd':>8} {'kernel':>8} {'ratio':>6} "
          f"{'old f+b':>8} {'kernel':>8} {'ratio':>6}   (ms)")
    for name, shape in SHAPES:
        x = jnp.asarray(rng.normal(size=shape) * 2.0 + 0.5, jnp.float32)
        scale = jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), jnp.float32)
        shift = jnp.asarray(rng.normal(size=shape[-1]) * 0.3, jnp.float32)
        dy = jnp.asarray(rng.normal(size=shape), jnp.float32)
        residual = jnp.asarray(rng.normal(size=shape), jnp.float32)
        repeat = max(1, args.repeat * 2_097_152 // int(np.prod(shape)))  # ~equal time each
        for extra in ((), (residual,)):
            row = []
            for fn in (onednn_then_xla, native):
                forward = jax.jit(lambda *a, fn=fn: fn(*a)[0])
                both = jax.jit(lambda *a, fn=fn: forward_and_gradients(fn, dy, *a))
                operands = (x, scale, shift, *extra)
                row.append((median_ms(forward, operands, repeat),
                            median_ms(both, operands, repeat)))
            (of, ob), (nf, nb) = row
            print(f"{name:30} {'yes' if extra else 'no':>8} {of:8.3f} {nf:8.3f} {of / nf:6.2f} "
                  f"{ob:8.3f} {nb:8.3f} {ob / nb:6.2f}")


if __name__ == "__main__":
    main()
