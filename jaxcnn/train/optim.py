"""Optimizers by name, with the classic hyper-parameters as defaults.

Adam (Kingma and Ba, 2015) is the default with the paper's lr 1e-3, b1 0.9, b2 0.999,
eps 1e-8; SGD with momentum and Adadelta (Zeiler, 2012) are there for the lectures'
comparisons.
"""
from __future__ import annotations

import optax

from jaxcnn.errors import ConfigError, unknown

OPTIMIZERS = ("adam", "sgd", "adadelta")


SCHEDULES = ("constant", "cosine")


def learning_rate(config, total_steps: int) -> optax.Schedule | float:
    """``config.lr`` held constant, or decayed to 0 over ``total_steps`` along a half cosine
    (Loshchilov and Hutter, SGDR, 2017)."""
    if config.lr <= 0:
        raise ConfigError(f"learning rate must be positive, got lr={config.lr}")
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, decay_steps=max(total_steps, 1))
    raise unknown("schedule", config.schedule, SCHEDULES)


def make_optimizer(config, total_steps: int = 0) -> optax.GradientTransformation:
    """Builds the optimizer that ``config.optimizer`` names from the config's values.

    ``total_steps`` is the length of the whole run, over which a decaying schedule runs.
    """
    lr = learning_rate(config, total_steps)
    name = config.optimizer
    if name == "adam":
        return optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
    if name == "sgd":
        return optax.sgd(lr, momentum=config.momentum or None, nesterov=False)
    if name == "adadelta":
        return optax.adadelta(lr, rho=0.95, eps=1e-6)
    raise unknown("optimizer", name, OPTIMIZERS)
