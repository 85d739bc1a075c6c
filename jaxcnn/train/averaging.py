"""An exponential moving average of the parameters, for evaluation.

Averaging the iterates of stochastic gradient descent (Polyak and Juditsky, "Acceleration of
stochastic approximation by averaging", SIAM J. Control Optim. 1992) smooths out the noise of
the last steps; the exponential form, ``average <- average + (1 - decay) * (params - average)``,
is the one TensorFlow's ``ExponentialMovingAverage`` and PyTorch's
``torch.optim.swa_utils.get_ema_multi_avg_fn`` compute (a linear interpolation towards the new
parameters), so both frameworks' averages follow the same recurrence. The average is only
read: training goes on with the parameters themselves.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def ema_update(average: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    """One step of the average: each leaf moves ``1 - decay`` of the way to ``params``.

    ``decay`` in [0, 1): 0 gives ``params`` back (up to float rounding), values near 1
    average over about ``1 / (1 - decay)`` steps (0.998: the last 500). Start the average at
    the initial parameters (``jax.tree.map(jnp.copy, params)``); the two trees must have the
    same structure and shapes. Leaves keep their dtype.
    """
    if not isinstance(decay, jax.Array) and not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_update: decay must be in [0, 1), got {decay}; 0.998 averages "
                         f"over about the last 500 steps")
    if jax.tree.structure(average) != jax.tree.structure(params):
        raise ValueError("ema_update: the average and the parameters have different tree "
                         "structures; start the average from a copy of the parameters")

    def move(mean, value):
        if mean.shape != value.shape:
            raise ValueError(f"ema_update: a leaf of the average has shape {mean.shape} and "
                             f"the parameter {value.shape}")
        weight = jnp.asarray(1.0 - decay, mean.dtype)
        return mean + weight * (value.astype(mean.dtype) - mean)

    return jax.tree.map(move, average, params)
