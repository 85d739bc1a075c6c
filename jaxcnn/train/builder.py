"""The model a config asks for: its registry name plus ``config.model_kwargs``.

``config.model_kwargs`` holds keyword arguments for the model's builder, e.g.
``{"kernel_init": "he_normal"}`` or ``{"n": 1}`` for an 8-layer CIFAR ResNet. Initialisers are
given by name, so a config stays plain JSON (``config.json`` of a run):

- ``glorot_uniform``, ``glorot_normal`` (Glorot and Bengio, "Understanding the difficulty of
  training deep feedforward neural networks", AISTATS 2010);
- ``he_normal``, ``he_uniform`` (He, Zhang, Ren and Sun, "Delving deep into rectifiers",
  ICCV 2015; fan-in, gain 2);
- ``lecun_normal``, ``lecun_uniform`` (LeCun et al., "Efficient BackProp", 1998);
- ``zeros``, ``constant:V`` (every weight V), ``normal:S`` (N(0, S^2)), ``uniform:A``
  (U(-A, A)).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxcnn.errors import ConfigError
from jaxcnn.models import get_model_for

NAMED_INITIALIZERS = {
    "glorot_uniform": nn.initializers.glorot_uniform(),
    "glorot_normal": nn.initializers.glorot_normal(),
    "he_normal": nn.initializers.he_normal(),
    "he_uniform": nn.initializers.he_uniform(),
    "lecun_normal": nn.initializers.lecun_normal(),
    "lecun_uniform": nn.initializers.lecun_uniform(),
    "zeros": nn.initializers.zeros,
}
PARAMETRIC = {
    "constant": lambda v: nn.initializers.constant(v),
    "normal": lambda s: nn.initializers.normal(s),
    "uniform": lambda a: (lambda key, shape, dtype=jnp.float32:
                          jax.random.uniform(key, shape, dtype, -a, a)),
}


def initializer(spec: str) -> Callable[..., jax.Array]:
    """The Flax initialiser named by ``spec`` (see the module docstring)."""
    if spec in NAMED_INITIALIZERS:
        return NAMED_INITIALIZERS[spec]
    kind, sep, value = spec.partition(":")
    if kind in PARAMETRIC and sep:
        try:
            return PARAMETRIC[kind](float(value))
        except ValueError:
            pass
    names = [*NAMED_INITIALIZERS, *(f"{k}:VALUE" for k in PARAMETRIC)]
    raise ConfigError(f"unknown initialiser {spec!r}; known: {', '.join(names)}")


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``config.model_kwargs`` as builder arguments: ``*_init`` names become initialisers,
    lists become tuples (Flax module fields must be hashable)."""
    raw = config.get("model_kwargs") or {}
    raw = raw.to_dict() if isinstance(raw, ml_collections.ConfigDict) else dict(raw)
    out = {}
    for key, value in raw.items():
        if key.endswith("_init") and isinstance(value, str):
            value = initializer(value)
        out[key] = _frozen(value)
    return out


def build_model(config: ml_collections.ConfigDict, image_shape) -> nn.Module:
    """The model of ``config`` for images of ``image_shape``; a keyword the model does not take
    raises a :class:`ConfigError` naming the model's fields."""
    kwargs = model_kwargs(config)
    try:
        return get_model_for(config.model, image_shape, num_classes=config.num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model {config.model!r} does not take model_kwargs "
                          f"{sorted(kwargs)}: {err}") from None


def _frozen(value):
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value
