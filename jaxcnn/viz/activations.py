"""What each layer computes for one image: the layers in call order and their activation maps.

Looking at the feature maps a trained network produces for an input is the first of the
visualisations in Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks",
ECCV 2014: early layers respond to edges and strokes, later ones to larger parts. This module
shows the maps themselves (the outputs of the layers); it does not implement the paper's
deconvnet projection back to pixel space.

Layers are found by tracing the model once with :func:`flax.linen.intercept_methods` (shapes
only, nothing is computed), and their outputs are read with Flax's
``capture_intermediates``. A layer is named by its module path, ``"conv1"`` or
``"layer1_0/conv1"``; :func:`list_layers` lists the names. A layer's output is what its module
returns, and where a module's call runs its base class's call first, what that inner call
returns: ``conv1`` of LeNet-5 (a :class:`jaxcnn.models.conv_pool.ConvReluMaxPool`, whose base
is the convolution) is the convolution before its ReLU and pool. Both are traced with XLA's
own layers (:func:`jaxcnn.models.conv.plain_lax_layers`), where that inner call exists.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import InputShapeError, unknown
from jaxcnn.models.conv import plain_lax_layers
from jaxcnn.viz._figure import as_model_input, grid_shape, new_figure, save, show_image, wrap

MAX_COLUMNS = 8


@dataclasses.dataclass(frozen=True)
class Layer:
    """One module call of the forward pass: its path, class, output shape (no batch axis),
    and whether it holds a convolution kernel (a 4-d ``kernel`` parameter)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    is_conv: bool


def list_layers(model: nn.Module, variables, image_shape: Sequence[int]) -> list[Layer]:
    """The layers of ``model`` in the order their outputs are produced on a ``image_shape`` input.

    A container (a residual block) comes after the layers inside it; a module called twice is
    listed once, with the output of its first call to return (the innermost, where a module
    calls its base class's ``__call__``). The model's own call (the logits) is not listed.
    """
    layers: dict[str, Layer] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path and hasattr(out, "shape"):
            name = "/".join(path)
            if name not in layers:
                kernel = context.module.variables.get("params", {}).get("kernel")
                layers[name] = Layer(name, type(context.module).__name__, tuple(out.shape[1:]),
                                     getattr(kernel, "ndim", 0) == 4)
        return out

    x = jax.ShapeDtypeStruct((1, *tuple(image_shape)), jnp.float32)
    with nn.intercept_methods(record), plain_lax_layers():
        jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    return list(layers.values())


def first_conv_layer(model: nn.Module, variables, image_shape: Sequence[int]) -> str | None:
    """The name of the first convolution the input meets, or ``None`` if there is none."""
    return next((layer.name for layer in list_layers(model, variables, image_shape)
                 if layer.is_conv), None)


def activation_maps(model: nn.Module, variables, image, layers: str | Sequence[str] | None = None
                    ) -> dict[str, np.ndarray]:
    """The outputs of ``layers`` for one image, ``{name: array}`` without the batch axis.

    Args:
      model, variables: a Flax module and its variables, applied with ``train=False``.
      image: one image, HWC or 1HWC; uint8 is scaled to [0, 1], floats are used as they are.
      layers: a layer name or a list of them (see :func:`list_layers`); ``None`` takes every
        convolution layer, or every layer if the model has no convolution.

    Returns:
      A dict in the order of ``layers`` (call order by default); a convolution's output has
      shape ``(H, W, C)``, a dense layer's ``(C,)``.
    """
    x = as_model_input(image)
    if x.shape[0] != 1:
        raise InputShapeError(f"activation_maps takes one image, got a batch of {x.shape[0]}; "
                              "pass images[i]")
    available = list_layers(model, variables, x.shape[1:])
    names = [layer.name for layer in available]
    if layers is None:
        wanted = [layer.name for layer in available if layer.is_conv] or names
    else:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        for name in wanted:
            if name not in names:
                raise unknown("layer", name, names)
    with plain_lax_layers():  # the layers list_layers saw, each call's output kept
        _, state = _capture(model, tuple(wanted), variables, jnp.asarray(x))
    maps = {}
    for name in wanted:
        node = state["intermediates"]
        for part in name.split("/"):
            node = node[part]
        maps[name] = np.asarray(node["__call__"][0][0])
    return maps


@functools.partial(jax.jit, static_argnums=(0, 1))
def _capture(model: nn.Module, names: tuple[str, ...], variables, x: jax.Array):
    """``model.apply`` returning the outputs of the layers ``names`` as Flax intermediates."""
    def wanted(module, method_name):
        return method_name == "__call__" and "/".join(module.path) in names

    return model.apply(variables, x, train=False, capture_intermediates=wanted,
                       mutable=["intermediates"])


def plot_activations(model: nn.Module, variables, image, layers: str | Sequence[str] | None = None,
                     *, max_maps: int = 32, max_layers: int = 6, title: str | None = None,
                     path=None):
    """The input image and, for each layer, a grid of its activation maps (Zeiler & Fergus 2014).

    Each layer is one panel: a tile per channel (the first ``max_maps``), all tiles of a
    layer on one colour scale so that weak and dead channels look weak; a dense layer's
    output is drawn as one strip. With ``layers=None``, a deep network's convolutions are
    thinned to ``max_layers`` spread evenly from the first to the last. Returns the figure;
    writes a PNG when ``path`` is given.
    """
    if layers is None:
        found = list_layers(model, variables, as_model_input(image).shape[1:])
        convs = [layer.name for layer in found if layer.is_conv] or [l.name for l in found]
        if len(convs) > max_layers:
            picks = np.unique(np.linspace(0, len(convs) - 1, max_layers).round().astype(int))
            convs = [convs[i] for i in picks]
        layers = convs
    maps = activation_maps(model, variables, image, layers)
    panels = []  # (name, array, tiles, rows, columns)
    for name, value in maps.items():
        tiles = min(value.shape[-1], max_maps) if value.ndim == 3 else 1
        rows, columns = grid_shape(tiles, MAX_COLUMNS) if value.ndim == 3 else (1, 1)
        panels.append((name, value, tiles, rows, columns))
    width = 11.0
    tile = (width * 0.8) / MAX_COLUMNS
    heights = [rows * tile * 1.15 + 0.45 for *_, rows, _ in panels]
    fig = new_figure(width, max(sum(heights), 2.5) + 0.6)
    fig.suptitle(wrap(title or "activation maps (Zeiler & Fergus 2014)", width, 12), fontsize=12)
    left, right = fig.subfigures(1, 2, width_ratios=[1, 4])
    ax = left.add_subplot(1, 1, 1)
    show_image(ax, as_model_input(image)[0])
    ax.set(xticks=[], yticks=[], title="input")
    right_panels = right.subfigures(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (name, value, tiles, rows, columns) in zip(right_panels, panels):
        _draw_layer(sub, name, value, tiles, rows, columns)
    return save(fig, path)


def _draw_layer(sub, name: str, value: np.ndarray, tiles: int, rows: int, columns: int) -> None:
    shape = "\u00d7".join(map(str, value.shape))
    if value.ndim != 3:
        ax = sub.add_subplot(1, 1, 1)
        ax.imshow(value.reshape(1, -1), aspect="auto", cmap="viridis")
        ax.set(yticks=[], xlabel="unit")
        sub.suptitle(f"{name}: {shape}", fontsize=10)
        return
    shown = value[..., :tiles]
    low, high = float(shown.min()), float(shown.max())
    if high <= low:
        high = low + 1.0
    grid = sub.add_gridspec(rows, MAX_COLUMNS)
    for index in range(tiles):
        ax = sub.add_subplot(grid[index // columns, index % columns])
        ax.imshow(shown[..., index], cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(index), fontsize=7, pad=2)
    note = f", first {tiles} of {value.shape[-1]} channels" if tiles < value.shape[-1] else ""
    sub.suptitle(f"{name}: {shape}{note}, colour scale {low:.2g} to {high:.2g}", fontsize=10)
