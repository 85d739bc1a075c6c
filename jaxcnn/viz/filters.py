"""The learned kernels of a convolution layer as a grid of small images.

A trained network's first-layer filters are the one set of weights that can be read directly
as pictures: they act on pixels, and typically become oriented edge, stroke and colour-blob
detectors (Krizhevsky, Sutskever and Hinton 2012, fig. 3; Zeiler and Fergus 2014, fig. 2).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from jaxcnn.errors import JaxCNNError, unknown
from jaxcnn.viz._figure import grid_shape, new_figure, normalise, save, tile_axes, wrap


def conv_kernels(variables) -> dict[str, np.ndarray]:
    """Every 4-d ``kernel`` parameter, ``{layer name: (kh, kw, in, out) array}``.

    ``variables`` is ``{"params": ...}`` or the params tree itself; names are module paths
    (``"conv1"``, ``"layer1_0/conv1"``), top-level layers first, in natural order.
    """
    params = variables.get("params", variables) if hasattr(variables, "get") else variables
    found: dict[str, np.ndarray] = {}

    def walk(node, path):
        for key, value in node.items():
            if key == "kernel" and getattr(value, "ndim", 0) == 4:
                found["/".join(path)] = np.asarray(value)
            elif hasattr(value, "items"):
                walk(value, (*path, str(key)))

    walk(params, ())
    return dict(sorted(found.items(), key=lambda item: _order_key(item[0])))


def _order_key(name: str):
    parts = name.split("/")
    return len(parts), [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)]
                        for p in parts]


def guess_first_layer(kernels: dict[str, np.ndarray]) -> str:
    """The layer most likely to see the image, from the kernels alone.

    The input layer's kernel has an input-channel count that no convolution produces (the
    image's 1 or 3 channels); among such layers the shallowest, first in natural order, wins.
    Parameter names need not follow call order, so pass ``model=`` to :func:`plot_filters`
    for a traced answer.
    """
    produced = {kernel.shape[3] for kernel in kernels.values()}
    candidates = [name for name, kernel in kernels.items() if kernel.shape[2] not in produced]
    return (candidates or list(kernels))[0]


def plot_filters(variables_or_kernel, layer: str | None = None, *, model=None,
                 image_shape: Sequence[int] | None = None, max_filters: int = 64,
                 title: str | None = None, path=None):
    """Draws a convolution layer's kernels, one tile per output filter.

    Args:
      variables_or_kernel: Flax variables (or params), or a kernel array ``(kh, kw, in, out)``.
      layer: the layer to draw (a name from :func:`conv_kernels`); by default the first
        convolution: traced through ``model`` on an ``image_shape`` input when both are given,
        otherwise guessed from the kernels (:func:`guess_first_layer`).
      max_filters: draw at most this many filters (the first ones).

    A 3-input-channel kernel is drawn in RGB; any other count as the mean over its input
    channels, in grey. Each tile is min-max scaled on its own, so the tiles show each
    filter's pattern, not its relative strength. Returns the figure; writes a PNG at ``path``.
    """
    name, kernel = _select_kernel(variables_or_kernel, layer, model, image_shape)
    kh, kw, cin, cout = kernel.shape
    count = min(cout, max_filters)
    rows, columns = grid_shape(count, 16)
    tile = min(1.0, 10.0 / columns)
    width = max(6.0, columns * tile + 0.4)
    tile = (width - 0.4) / columns
    fig = new_figure(width, rows * tile * 1.2 + 0.7)
    rgb = cin == 3
    for index, ax in enumerate(tile_axes(fig, count, rows, columns)):
        weights = kernel[..., index]
        if rgb:
            ax.imshow(normalise(weights), interpolation="nearest")
        else:
            ax.imshow(normalise(weights.mean(axis=-1)), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
        ax.set_title(str(index), fontsize=7, pad=2)
    how = "RGB" if rgb else ("grey" if cin == 1 else f"mean over {cin} input channels")
    shown = f" (first {count})" if count < cout else ""
    fig.suptitle(wrap(title or f"{name}: {cout} filters{shown}, {kh}\u00d7{kw}\u00d7{cin}, "
                               f"{how}, each tile scaled to its own range", width), fontsize=10)
    return save(fig, path)


def _select_kernel(source, layer, model, image_shape) -> tuple[str, np.ndarray]:
    if hasattr(source, "ndim") or isinstance(source, (list, tuple)):
        kernel = np.asarray(source)
        if kernel.ndim != 4:
            raise JaxCNNError(f"a convolution kernel has shape (kh, kw, in, out), got "
                              f"{kernel.shape}")
        return layer or "kernel", kernel
    kernels = conv_kernels(source)
    if not kernels:
        raise JaxCNNError("these variables hold no convolution kernel (no 4-d 'kernel' "
                          "parameter); plot_filters needs a convolutional model")
    if layer is None and model is not None:
        if image_shape is None:
            raise JaxCNNError("plot_filters(model=...) also needs image_shape=(H, W, C), the "
                              "input on which to trace the model")
        from jaxcnn.viz.activations import first_conv_layer

        layer = first_conv_layer(model, source, image_shape)
    if layer is None:
        layer = guess_first_layer(kernels)
    layer = layer[: -len("/kernel")] if layer.endswith("/kernel") else layer
    if layer not in kernels:
        raise unknown("convolution layer", layer, kernels)
    return layer, kernels[layer]
