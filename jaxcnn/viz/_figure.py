"""Shared pieces of the figures: Agg-backed figures, saving, tile grids and input scaling.

Figures are built as bare :class:`matplotlib.figure.Figure` objects on an Agg canvas, not
through ``pyplot``: writing files never depends on (or changes) the session's backend, and no
figure is left open in pyplot's registry. A notebook still shows a returned figure inline:
IPython renders a plain ``Figure`` only once pyplot's inline backend has started (after a first
``pyplot`` figure or ``%matplotlib inline``), so these figures also carry ``_repr_png_``, which
IPython uses in a fresh kernel too.
"""
from __future__ import annotations

import io
import math
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


class ShownFigure(Figure):
    """A :class:`Figure` that IPython displays as a PNG whether or not pyplot ever ran."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, facecolor="white")
        return buffer.getvalue()


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by Agg (constrained layout by default,
    which keeps titles and tiles from overlapping)."""
    fig = ShownFigure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | pathlib.Path | None) -> Figure:
    """Writes ``fig`` as a PNG at ``path`` (parent folders created) when a path is given."""
    if path is not None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, facecolor="white")
    return fig


def grid_shape(count: int, max_columns: int = 16, row: int = 8) -> tuple[int, int]:
    """Rows and columns of a grid holding ``count`` tiles: one row up to ``row`` tiles, then
    at least ``row`` columns and a near-square grid, at most ``max_columns`` wide."""
    count = max(1, count)
    columns = count if count <= row else max(row, math.ceil(math.sqrt(count)))
    columns = min(columns, max_columns)
    return math.ceil(count / columns), columns


def wrap(text: str, width_inches: float, fontsize: float = 10) -> str:
    """``text`` broken into lines that fit ``width_inches`` at ``fontsize`` points."""
    import textwrap

    return textwrap.fill(text, max(20, int(width_inches * 72 / (0.55 * fontsize))))


def tile_axes(fig, count: int, rows: int, columns: int) -> list:
    """``count`` image axes (no ticks) on a ``rows`` x ``columns`` grid; spare cells stay empty."""
    grid = fig.add_gridspec(rows, columns)
    axes = []
    for index in range(count):
        ax = fig.add_subplot(grid[index // columns, index % columns])
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    return axes


def normalise(tile: np.ndarray) -> np.ndarray:
    """Min-max scales ``tile`` to [0, 1]; a constant tile becomes mid-grey."""
    tile = np.asarray(tile, np.float32)
    low, high = float(tile.min()), float(tile.max())
    if high - low < 1e-12:
        return np.full_like(tile, 0.5)
    return (tile - low) / (high - low)


def as_model_input(images) -> np.ndarray:
    """Images as the models take them: uint8 scaled to [0, 1] float32, floats passed as they are.

    A single image (3 dimensions, HWC) gains a batch dimension.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        from jaxcnn.errors import InputShapeError

        raise InputShapeError(f"expected images of shape (N, H, W, C) or (H, W, C), got "
                              f"{images.shape}; add the channel axis, e.g. images[..., None]")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def show_image(ax, image: np.ndarray) -> None:
    """Draws one HWC image: grey for one channel, RGB for three (min-max scaled if not in [0, 1])."""
    image = np.asarray(image)
    image = image / np.float32(255) if image.dtype == np.uint8 else image.astype(np.float32)
    if image.min() < 0 or image.max() > 1:
        image = normalise(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        ax.imshow(np.clip(image, 0, 1))
    else:
        flat = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        if flat.ndim == 3:
            flat = flat.mean(axis=-1)
        ax.imshow(flat, cmap="gray", vmin=0, vmax=1)


def label_name(class_names, index: int) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)
