"""The model registry: names, builders and the metadata each classic model carries.

Modelled on torchvision's ``get_model``/``list_models``: every model family module in
``jaxcnn.models`` registers its variants with :func:`register`, and the package imports every
family module on first use, so a new file is all a new family needs.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import flax.linen as nn

from jaxcnn.errors import unknown


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What jaxcnn knows of a registered model.

    Attributes:
      name: registry name, e.g. ``"resnet50"``.
      builder: callable ``builder(num_classes=..., **kwargs) -> nn.Module``.
      paper: the publication the architecture follows (authors, title, year).
      input_shape: default ``(H, W, C)`` input.
      num_params: published trainable parameter count for ``num_classes`` classes
        (``None`` where no reference count exists).
      num_classes: the class count ``num_params`` refers to.
      top1: published ImageNet top-1 accuracy in percent, where one exists.
      reference: the reference implementation the layers and counts are checked against.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    input_shape: tuple[int, int, int]
    num_params: int | None = None
    num_classes: int = 10
    top1: float | None = None
    reference: str = ""


_REGISTRY: dict[str, ModelInfo] = {}
_LOADED = False


def register(name: str, builder: Callable[..., nn.Module], **metadata: Any) -> ModelInfo:
    """Adds ``builder`` under ``name`` with its :class:`ModelInfo` metadata."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    info = ModelInfo(name=name, builder=builder, **metadata)
    _REGISTRY[name] = info
    return info


def _load_families() -> None:
    """Imports every module of ``jaxcnn.models`` so that each registers its models."""
    global _LOADED
    if _LOADED:
        return
    package = importlib.import_module("jaxcnn.models")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"jaxcnn.models.{module.name}")
    _LOADED = True


def list_models() -> list[str]:
    """Returns the names of all registered models, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """Returns the metadata of model ``name``; unknown names raise with the known ones listed."""
    _load_families()
    if name not in _REGISTRY:
        raise unknown("model", name, _REGISTRY)
    return _REGISTRY[name]


def get_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds model ``name`` for ``num_classes`` classes (default: its registered count)."""
    info = model_info(name)
    return info.builder(num_classes=num_classes or info.num_classes, **kwargs)


def get_model_for(name: str, image_shape, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """:func:`get_model` for images of ``image_shape`` (H, W, C): models with an
    ``in_channels`` field are built for C channels (e.g. VGG on grey digits)."""
    info = model_info(name)
    fields = getattr(info.builder, "func", info.builder).__dataclass_fields__
    if "in_channels" in fields and "in_channels" not in kwargs:
        kwargs["in_channels"] = int(image_shape[-1])
    return get_model(name, num_classes=num_classes, **kwargs)
