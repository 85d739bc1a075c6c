"""The zoo's BatchNorm: oneDNN's batch normalization for training steps on the CPU, else Flax's.

Batch normalization (Ioffe and Szegedy 2015) in training normalizes each channel by the
batch's mean and variance; its gradient runs back through both statistics. XLA:CPU computes
it as separate reductions and elementwise passes over the activations (resnet20 at batch
128: 18 ms of reductions and 6.6 ms of ``x - mean`` in a 203 ms step). oneDNN's fused kernels
(:mod:`jaxcnn.native.batch_norm`) compute the statistics and the normalized output in one
call and the three gradients in another: resnet20's first-stage layer (128x32x32x16), forward
and backward, 0.94 ms against Flax's 1.51 ms under XLA; whole resnet20 steps 670-682 ->
700-704 images/s (two alternating process pairs).

:class:`BatchNorm` is ``flax.linen.BatchNorm`` (same attributes, variables, names, running
averages and results up to float32 rounding) whose training pass on the CPU calls oneDNN
when :func:`uses_onednn` holds: float32 NHWC activations of at least
:data:`MIN_ONEDNN_ELEMENTS`, the last axis the feature axis, scale and bias both used, the
fast (one-pass) variance, no ``axis_name`` (synchronised statistics), mask or index groups,
on a one-device CPU backend with the bridge built (:func:`jaxcnn.models.conv.onednn_allowed`).
Otherwise, and always for evaluation with running averages and at initialization, Flax's own
code runs. The batch statistics that update the running averages are the biased variance and
mean, as Flax's.

``bn(x, residual=r, relu=True)`` is ``relu(bn(x) + r)`` (``r`` optional), the tail of every
residual block (He et al. 2016) and of conv -> BN -> ReLU stages. Where oneDNN's path would
run, it is instead one call each way into jaxcnn's own kernel (``batch_norm_relu.cc``):
statistics, normalization, residual and ReLU forward, and the masked gradient, the three
BatchNorm gradients and the residual's backward, where XLA:CPU would run separate loop
fusions around oneDNN's calls. resnet20's layers alone, forward and backward: 2.1-3.2x
faster (``benchmarks/batch_norm_relu.py``); whole resnet20 steps at batch 128 1.08x
(alternating in one process).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.models.conv import onednn_allowed
from jaxcnn.native import batch_norm as onednn

# Activations (elements per batch) below which Flax's code is kept: a oneDNN call takes the
# bridge's lock and starts its OpenMP team, which small tensors do not repay. Forward and
# backward of one layer alone, oneDNN against Flax: 2,048 elements 0.025 against 0.022 ms,
# 8,192 0.026 against 0.025-0.038, 32,768 0.036 against 0.054, 65,536 0.050 against 0.138,
# resnet20's 128x32x32x16 0.94 against 1.51.
MIN_ONEDNN_ELEMENTS = 2 ** 14


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_onednn(x, scale, bias, epsilon: float):
    """``(y, mean, variance)``, differentiable in ``x``, ``scale`` and ``bias`` through ``y``
    (the statistics are outputs for the running averages; their cotangents are dropped)."""
    return onednn.forward(x, scale, bias, epsilon)


def _normalize_forward(x, scale, bias, epsilon):
    y, mean, variance = onednn.forward(x, scale, bias, epsilon)
    return (y, mean, variance), (x, mean, variance, scale)


def _normalize_backward(epsilon, residuals, cotangents):
    x, mean, variance, scale = residuals
    return onednn.backward(x, cotangents[0], mean, variance, scale, epsilon)


_normalize_onednn.defvjp(_normalize_forward, _normalize_backward)


def _native_tail(with_residual: bool):
    """``f(epsilon, x, scale, bias[, residual])`` = ``(relu(bn(x) [+ residual]), mean,
    variance)`` by jaxcnn's kernel, differentiable like :func:`_normalize_onednn` (and in the
    residual)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def tail(epsilon, x, scale, bias, *residual):
        return onednn.relu_forward(x, scale, bias, epsilon, *residual)

    def forward(epsilon, x, scale, bias, *residual):
        y, mean, variance = onednn.relu_forward(x, scale, bias, epsilon, *residual)
        return (y, mean, variance), (x, y, mean, variance, scale, bias)

    def backward(epsilon, residuals, cotangents):
        x, y, mean, variance, scale, bias = residuals
        return onednn.relu_backward(x, y, cotangents[0], mean, variance, scale, bias, epsilon,
                                    with_residual)

    tail.defvjp(forward, backward)
    return tail


_NATIVE_TAIL = {False: _native_tail(False), True: _native_tail(True)}


def normalize_xla(x, scale, bias, epsilon: float):
    """``(y, mean, variance)`` of NHWC ``x`` as Flax computes them in training (the variance
    as E[x^2] - E[x]^2, clipped at 0), in plain JAX: what a :class:`BatchNorm` traced for the
    CPU runs where the program executes on another platform."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    variance = jnp.maximum(jnp.mean(jnp.square(x), axis=(0, 1, 2)) - mean ** 2, 0)
    y = (x - mean) * lax.rsqrt(variance + epsilon) * scale + bias
    return y, mean, variance


def _epilogue(y, residual, relu: bool):
    """``y + residual`` (none where ``residual`` is ``None``), then ReLU where ``relu``."""
    y = y if residual is None else y + residual
    return nn.relu(y) if relu else y


def _normalize_relu_xla(x, scale, bias, *residual, epsilon: float):
    y, mean, variance = normalize_xla(x, scale, bias, epsilon)
    return _epilogue(y, residual[0] if residual else None, True), mean, variance


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` whose CPU training pass is oneDNN's (module docstring)."""

    def uses_onednn(self, x, use_running_average, mask) -> bool:
        if use_running_average or self.is_initializing() or mask is not None:
            return False
        if self.axis_name is not None or self.axis_index_groups is not None:
            return False
        if x.ndim != 4 or self.axis not in (-1, 3) or not (self.use_scale and self.use_bias):
            return False
        if not self.use_fast_variance:  # Flax's two-pass variance was asked for
            return False
        if x.dtype != jnp.float32 or self.param_dtype != jnp.float32 \
                or self.dtype not in (None, jnp.float32):
            return False
        return x.size >= MIN_ONEDNN_ELEMENTS and onednn_allowed()

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None,
                 residual=None, relu: bool = False):
        """Normalizes ``x``; then adds ``residual`` (an array of ``x``'s shape, or ``None``)
        and applies ReLU where ``relu``: ``relu(bn(x) + residual)``, the tail of a residual
        block. Where oneDNN's path is taken and ``relu`` is set, that tail runs in jaxcnn's
        own kernel with the normalization (``jaxcnn/native/batch_norm_relu.cc``)."""
        running = nn.merge_param("use_running_average", self.use_running_average,
                                 use_running_average)
        if residual is not None and jnp.shape(residual) != x.shape:
            raise ValueError(f"BatchNorm's residual must have the input's shape {x.shape}; "
                             f"got {jnp.shape(residual)}")
        if not self.uses_onednn(x, running, mask):
            return _epilogue(super().__call__(x, use_running_average, mask=mask), residual,
                             relu)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)

        fused = relu and (residual is None or residual.dtype == jnp.float32)
        if fused:
            extra = () if residual is None else (residual,)
            y, mean, variance = lax.platform_dependent(
                x, scale, bias, *extra,
                cpu=functools.partial(_NATIVE_TAIL[residual is not None], self.epsilon),
                default=functools.partial(_normalize_relu_xla, epsilon=self.epsilon))
        else:
            y, mean, variance = lax.platform_dependent(
                x, scale, bias, cpu=functools.partial(_normalize_onednn, epsilon=self.epsilon),
                default=functools.partial(normalize_xla, epsilon=self.epsilon))
            y = _epilogue(y, residual, relu)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * variance
        return y
