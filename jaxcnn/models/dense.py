"""The zoo's dense layer: oneDNN's matmul on the CPU for layers with enough work, else XLA's.

A fully connected layer is one matmul each way: y = x @ W forward, then g @ W^T (the input
gradient) and x^T @ g (the kernel gradient). On the CPU, float32 layers of at least
:data:`MIN_ONEDNN_MACS` multiply-adds per batch run all three as oneDNN matmul calls
(:mod:`jaxcnn.native.matmul`, the same library and lock as the convolutions of
:mod:`jaxcnn.models.conv`), reading either operand transposed in place. The lecture CNN's
16000 -> 100 layer at batch 128 (205M multiply-adds each way) takes 2.3-2.9 ms per product
there (140-175 GFLOP/s, ``benchmarks/throughput.py`` and the notes of issue 7), where XLA:CPU
measured 2.6-3.1 ms alone and more inside a whole step, whose other work it overlaps on the
same two cores.

Elsewhere (other platforms, other dtypes, a ``precision`` or ``preferred_element_type``,
programs partitioned over devices: :func:`jaxcnn.models.conv.onednn_allowed`) it is
``lax.dot_general`` unchanged. :data:`Dense` is ``flax.linen.Dense`` with this plugged in:
same parameters, names and shapes. Results equal XLA's up to float32 summation order.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxcnn.models.conv import onednn_allowed
from jaxcnn.native import matmul as onednn

# Multiply-adds of a layer's forward matmul (whole batch) below which XLA's dot is kept:
# small products do not repay a call that takes the bridge's lock. LeNet-5 at batch 24 (its
# 400 -> 120 layer: 1.15M) trained at 11,224-11,602 images/s with oneDNN against
# 11,646-11,822 with XLA; at batch 128 (6.1M) the two were within the run-to-run noise.
MIN_ONEDNN_MACS = 2 ** 21


@jax.custom_vjp
def _matmul_onednn(x, w):
    return onednn.matmul(x, w)


def _forward(x, w):
    return onednn.matmul(x, w), (x, w)


def _backward(residuals, g):
    x, w = residuals
    return onednn.matmul(g, w, transpose_b=True), onednn.matmul(x, g, transpose_a=True)


_matmul_onednn.defvjp(_forward, _backward)


def _uses_onednn(lhs, rhs, dimension_numbers, precision, preferred_element_type) -> bool:
    if precision is not None or preferred_element_type is not None:
        return False
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or lhs.ndim < 2 or rhs.ndim != 2:
        return False
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or 0 in lhs.shape + rhs.shape:
        return False
    return lhs.size * rhs.shape[1] >= MIN_ONEDNN_MACS and onednn_allowed()


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for a dense layer (``lhs``'s last axis against ``rhs``'s first),
    routed on the CPU as the module's docstring says."""
    if not _uses_onednn(lhs, rhs, dimension_numbers, precision, preferred_element_type):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)

    def cpu(x, w):
        rows = _matmul_onednn(x.reshape(-1, x.shape[-1]), w)
        return rows.reshape(*x.shape[:-1], w.shape[1])

    return lax.platform_dependent(
        lhs, rhs, cpu=cpu,
        default=lambda x, w: lax.dot_general(x, w, dimension_numbers))


Dense = functools.partial(nn.Dense, dot_general=dot_general)
"""``flax.linen.Dense`` with :func:`dot_general` (oneDNN's matmul on the CPU)."""
