"""Class saliency maps: which pixels the class score is most sensitive to.

Simonyan, Vedaldi and Zisserman, "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop 2014, section 3: the saliency of
pixel (i, j) for class c is ``max over channels |d S_c / d I|``, the gradient of the class
score S_c (the logit, before the softmax) with respect to the image, computed by one
backward pass.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.viz._figure import label_name, new_figure, save, show_image, wrap

PAIRS_PER_ROW = 4


def saliency(model, variables, images, class_index=None) -> jax.Array:
    """Saliency maps ``(N, H, W)`` of ``images`` (Simonyan et al. 2014).

    Args:
      model, variables: a Flax module and its variables, applied with ``train=False``.
      images: ``(N, H, W, C)`` or one ``(H, W, C)`` image as the model takes it (float);
        uint8 images are scaled to [0, 1].
      class_index: the class whose logit is differentiated: an int for every image, one int
        per image, or ``None`` for each image's predicted class.

    One forward and one backward pass for the whole batch: in ``train=False`` mode an
    image's logits depend on that image alone, so the gradient of the summed target logits
    holds every image's own gradient. Compiled with ``jax.jit`` (the model a static
    argument, so a second call on the same shapes reuses the compilation), and pure, so it
    may also be called inside a jitted function.
    """
    x = jnp.asarray(images)
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    x = x.astype(jnp.float32)
    if x.ndim == 3:
        x = x[None]
    return _saliency(model, variables, x, class_index)


@functools.partial(jax.jit, static_argnums=0)
def _saliency(model, variables, x: jax.Array, class_index) -> jax.Array:
    logits, pullback = jax.vjp(lambda inputs: model.apply(variables, inputs, train=False), x)
    if class_index is None:
        target = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
    else:
        target = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), logits.shape[:1])
    (gradient,) = pullback(jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype))
    return jnp.abs(gradient).max(axis=-1)


def plot_saliency(images, maps, *, labels=None, targets=None,
                  class_names: Sequence[str] | None = None, title: str | None = None, path=None):
    """Each image beside its saliency map, ``PAIRS_PER_ROW`` pairs to a row.

    Args:
      images: ``(N, H, W, C)`` images (uint8 or float).
      maps: ``(N, H, W)`` saliency maps from :func:`saliency`.
      labels: the true classes, written over the images.
      targets: the classes whose score was differentiated, written over the maps.

    Each map is drawn on its own scale (0 to its maximum), brighter = more salient. Returns
    the figure; writes a PNG at ``path``.
    """
    images = np.asarray(images)
    maps = np.asarray(maps)
    if images.ndim == 3 and maps.ndim == 2:
        images, maps = images[None], maps[None]
    count = len(images)
    pairs = max(1, min(count, PAIRS_PER_ROW))
    rows = max(1, -(-count // pairs))
    fig = new_figure(2.6 * pairs + 0.4, 1.6 * rows + 0.8)
    grid = fig.add_gridspec(rows, 2 * pairs)
    for index in range(count):
        row, column = divmod(index, pairs)
        ax_image = fig.add_subplot(grid[row, 2 * column])
        ax_map = fig.add_subplot(grid[row, 2 * column + 1])
        show_image(ax_image, images[index])
        ax_map.imshow(maps[index], cmap="hot", vmin=0, vmax=max(float(maps[index].max()), 1e-12),
                      interpolation="nearest")
        for ax in (ax_image, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None:
            ax_image.set_title(f"true {label_name(class_names, int(labels[index]))}", fontsize=8)
        if targets is not None:
            ax_map.set_title(f"saliency of {label_name(class_names, int(targets[index]))}",
                             fontsize=8)
    fig.suptitle(wrap(title or "class saliency maps: max over channels of |d logit / d image| "
                               "(Simonyan et al. 2014)", fig.get_figwidth()), fontsize=10)
    return save(fig, path)
