"""What an experiment is: a base training config, the arms that vary it, a quick mode.

Each ``experiments/configs/<name>.py`` defines ``get_config()`` (the base training run, so
``jaxcnn train --config experiments/configs/<name>.py`` trains its first arm's setting) and
``get_experiment()`` returning an :class:`Experiment`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections


@dataclasses.dataclass
class Experiment:
    """A scripted experiment.

    Attributes:
      title: one line, for the results table.
      claim: what the lectures (or the paper) claim, to be checked.
      published: the published result the measurement is set against.
      base: the training config every arm starts from.
      arms: ``{arm: {config key: value}}``, trained in order. A value ``"@ARM"`` is the
        workdir of an earlier arm (``init_from="@pretrain"``).
      quick: overrides for every arm in ``--quick`` mode (small subsets, few epochs).
      quick_arms: per-arm overrides in ``--quick`` mode, applied after ``quick``.
      budget: the full-settings budget in words, for the README.
      analysis: name of the function in :mod:`experiments.analysis` that summarises it.
      target: a test accuracy the claim names (the summary reports when it was reached).
      figure: what the figure shows: ``"accuracy"`` (test accuracy and training loss per
        epoch) or ``"error"`` (training and test error), ``""`` for none.
      figure_arms: the arms drawn (default: all).
    """

    title: str
    claim: str
    published: str
    base: ml_collections.ConfigDict
    arms: dict[str, dict[str, Any]]
    quick: dict[str, Any]
    budget: str
    analysis: str
    quick_arms: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    target: float = 0.0
    figure: str = "accuracy"
    figure_arms: tuple[str, ...] = ()


def base_config(**overrides) -> ml_collections.ConfigDict:
    """jaxcnn's default config with ``overrides`` (any key, including ``model_kwargs``), one
    checkpoint kept, evaluation in batches of 1,000."""
    from jaxcnn.configs import default

    config = default.get_config()
    config.eval_batch_size = 1000
    config.checkpoint_keep = 1
    return apply(config, overrides)


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """Sets each ``key: value`` of ``overrides`` on ``config`` (keys must exist, types fit);
    a ``model_kwargs`` dict is merged into the config's, ``model_kwargs=None`` empties it."""
    from jaxcnn.configs.loading import set_value

    for key, value in overrides.items():
        if key == "model_kwargs":
            merged = {**config.model_kwargs.to_dict(), **dict(value)} if value else {}
            config.model_kwargs = ml_collections.ConfigDict(merged)
        else:
            set_value(config, key, value)
    return config
