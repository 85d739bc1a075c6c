"""Loading a config file, applying ``--config.KEY=VALUE`` overrides, validating values.

Every error here is a :class:`jaxcnn.errors.JaxCNNError` naming the key or the file and what
is allowed, raised before anything is compiled or written.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections

from jaxcnn.configs import default
from jaxcnn.errors import ConfigError, unknown

POSITIVE_INTS = ("epochs", "batch_size", "eval_batch_size")
NONFINITE_POLICIES = ("stop", "skip", "ignore")


def load_config(path: str | None = None) -> ml_collections.ConfigDict:
    """The default config, or ``get_config()`` of the Python file at ``path``."""
    if not path:
        return default.get_config()
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist; pass a Python file that "
                          "defines get_config()")
    spec = importlib.util.spec_from_file_location(f"jaxcnn_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config()")
    return module.get_config()


def parse_value(text: str):
    """A command-line value as a Python literal where it is one (1e-3, 10, True), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_value(config: ml_collections.ConfigDict, key: str, value) -> None:
    """Sets dotted ``key`` to ``value``; the key must exist and the type must fit."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise unknown("config key", ".".join(parents[:i + 1]), _keys(config))
        node = node[part]
    if leaf not in node:
        raise unknown("config key", key, _keys(config))
    if isinstance(value, str) and not isinstance(node[leaf], str):
        value = parse_value(value)
    if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[leaf] = value
    except TypeError as err:
        raise ConfigError(f"config key {key!r} takes a {type(node[leaf]).__name__}, "
                          f"got {value!r}") from err


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Applies ``{dotted_key: value}`` overrides in order; returns ``config``."""
    for key, value in overrides.items():
        set_value(config, key, value)
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values that have a range; names the key, the value and what is allowed."""
    for key in POSITIVE_INTS:
        if config[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {config[key]}")
    if config.lr <= 0:
        raise ConfigError(f"lr must be positive, got {config.lr}")
    if config.get("checkpoint_every_steps", 0) < 0:
        raise ConfigError("checkpoint_every_steps must be >= 0 (0: epoch ends only), got "
                          f"{config.checkpoint_every_steps}")
    if config.get("checkpoint_keep", 1) < 1:
        raise ConfigError(f"checkpoint_keep must be >= 1, got {config.checkpoint_keep}")
    if config.get("nonfinite", "stop") not in NONFINITE_POLICIES:
        raise unknown("nonfinite policy", config.nonfinite, NONFINITE_POLICIES)
    if config.num_classes < 0:
        raise ConfigError(f"num_classes must be >= 0 (0: the dataset's), got {config.num_classes}")


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys
