"""Optimizers by name, with the classic hyper-parameters as defaults.

Adam (Kingma and Ba, 2015) is the default with the paper's lr 1e-3, b1 0.9, b2 0.999,
eps 1e-8; SGD with momentum and Adadelta (Zeiler, 2012) are there for the lectures'
comparisons.

With ``config.freeze``, ``config.trainable`` or ``config.lr_groups`` set, the optimizer is an
``optax.multi_transform``: frozen parameters get ``optax.set_to_zero()`` (no update, no
state), each learning-rate group its own copy of the optimizer
(:mod:`jaxcnn.train.transfer`).
"""
from __future__ import annotations

import optax

from jaxcnn.errors import ConfigError, unknown

OPTIMIZERS = ("adam", "sgd", "adadelta")


SCHEDULES = ("constant", "cosine")


def learning_rate(config, total_steps: int, lr: float | None = None) -> optax.Schedule | float:
    """``lr`` (default ``config.lr``) held constant, or decayed to 0 over ``total_steps`` along
    a half cosine (Loshchilov and Hutter, SGDR, 2017)."""
    lr = config.lr if lr is None else lr
    if lr <= 0:
        raise ConfigError(f"learning rate must be positive, got lr={lr}")
    if config.schedule == "constant":
        return lr
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
    raise unknown("schedule", config.schedule, SCHEDULES)


def make_optimizer(config, total_steps: int = 0) -> optax.GradientTransformation:
    """Builds the optimizer that ``config.optimizer`` names from the config's values.

    ``total_steps`` is the length of the whole run, over which a decaying schedule runs.
    Frozen parameters and learning-rate groups (``freeze``, ``trainable``, ``lr_groups``) make
    it a ``multi_transform`` over the parameters' labels.
    """
    from jaxcnn.train.transfer import optimizer_groups

    groups = optimizer_groups(config)
    if groups is None:
        return optimizer(config, total_steps)
    labels, rates = groups
    transforms = {label: optax.set_to_zero() if lr is None else optimizer(config, total_steps, lr)
                  for label, lr in rates.items()}
    return optax.multi_transform(transforms, labels)


def optimizer(config, total_steps: int = 0, lr: float | None = None) -> optax.GradientTransformation:
    """The optimizer ``config.optimizer`` with learning rate ``lr`` (default ``config.lr``)."""
    lr = learning_rate(config, total_steps, lr)
    name = config.optimizer
    if name == "adam":
        return optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps)
    if name == "sgd":
        return optax.sgd(lr, momentum=config.momentum or None, nesterov=False)
    if name == "adadelta":
        return optax.adadelta(lr, rho=0.95, eps=1e-6)
    raise unknown("optimizer", name, OPTIMIZERS)
