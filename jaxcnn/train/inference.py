"""Using a finished run: load its model and weights, classify image files."""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxcnn import data
from jaxcnn.data.batches import to_float
from jaxcnn.errors import DataError
from jaxcnn.train import rundir
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.state import variables_of


def load(workdir: str | pathlib.Path, best: bool = True):
    """Returns ``(model, variables, spec)`` of a run, from its best checkpoint if it has one
    (``best=True``), else from its newest good checkpoint."""
    from jaxcnn.models import get_model_for
    from jaxcnn.train.loop import new_state, restore

    config = rundir.read_run_config(workdir)
    spec = data.dataset_spec(config.dataset, config.data_dir or None)
    checkpoints = Checkpoints(workdir)
    try:
        state, _ = restore(checkpoints, new_state(config, spec), config.num_classes, best=best)
    finally:
        checkpoints.close()
    model = get_model_for(config.model, spec.image_shape, num_classes=config.num_classes)
    return model, jax.device_get(variables_of(state)), spec


def read_image(path: str | pathlib.Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A PNG/JPEG file as a uint8 ``shape`` (H, W, C) array: converted to grey or RGB as the
    run's data were, and resized bilinearly."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, np.uint8)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}; pass PNG or JPEG files") from err
    return array.reshape(height, width, channels)


def predict_files(workdir: str | pathlib.Path, paths, top: int = 5) -> list[dict]:
    """The ``top`` classes with probabilities for each image file, by a run's model."""
    model, variables, spec = load(workdir)
    images = np.stack([read_image(p, spec.image_shape) for p in paths])
    logits = model.apply(variables, to_float(images), train=False)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    results = []
    for path, p in zip(paths, probs):
        order = np.argsort(-p)[:min(top, len(p))]
        results.append({"file": str(path),
                        "top": [(spec.class_names[i], float(p[i])) for i in order]})
    return results
