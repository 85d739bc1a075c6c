"""Using a finished run: load its model and weights, classify image files.

An image file goes through the run's own preprocessing, read from its config: converted to
the dataset's channel count (grey or RGB), resized to the dataset's image size (bilinear), or
for ImageNet-style runs centre-cropped as evaluation crops, scaled to [0, 1] and normalised
with the statistics the run trained with (:mod:`jaxcnn.data.preprocess`). The last steps are
the evaluation pipeline's own function (:func:`jaxcnn.data.interface.eval_transform`).
"""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from jaxcnn import data
from jaxcnn.data.augment import parse_augment
from jaxcnn.data.interface import Recipe, eval_transform
from jaxcnn.data.preprocess import Preprocess, make_preprocess
from jaxcnn.errors import DataError
from jaxcnn.train import rundir
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.state import variables_of


def run_spec(config: ml_collections.ConfigDict) -> data.DatasetSpec:
    return data.dataset_spec(config.dataset, config.get("data_dir") or None,
                             config.get("manual_dir") or None)


def load(workdir: str | pathlib.Path, best: bool = True):
    """Returns ``(model, variables, spec)`` of a run, from its best checkpoint if it has one
    (``best=True``), else from its newest good checkpoint."""
    from jaxcnn.models import get_model_for
    from jaxcnn.train.loop import new_state, restore

    config = rundir.read_run_config(workdir)
    spec = run_spec(config)
    checkpoints = Checkpoints(workdir)
    try:
        state, _ = restore(checkpoints, new_state(config, spec), config.num_classes, best=best)
    finally:
        checkpoints.close()
    shape = spec.input_shape(config.get("image_size") or None)
    model = get_model_for(config.model, shape, num_classes=config.num_classes)
    return model, jax.device_get(variables_of(state)), spec


def run_preprocess(config: ml_collections.ConfigDict, spec: data.DatasetSpec) -> Preprocess:
    """The preprocessing a run's evaluation batches had, rebuilt from its config as
    :func:`jaxcnn.data.make_pipeline` built it (``per_pixel`` reads the training split again
    for its mean image)."""
    name = config.get("preprocess", "auto")
    if name == "auto":
        name = "unit" if spec.fixed_shape else "imagenet"
    pixel_mean = pixel_std = None
    if name == "per_pixel":
        from jaxcnn.data.stats import pixel_stats

        images, _ = data.load_split(config.dataset, "train", config.get("data_dir") or None,
                                    config.get("manual_dir") or None)
        pixel_mean, pixel_std = pixel_stats(images)
    return make_preprocess(name, spec.image_shape, mean=spec.mean, std=spec.std,
                           pixel_mean=pixel_mean, pixel_std=pixel_std,
                           image_size=config.get("image_size") or None)


def read_image(path: str | pathlib.Path, shape: tuple) -> np.ndarray:
    """A PNG/JPEG file as a uint8 (H, W, C) array with the channel count of ``shape`` (grey or
    RGB), resized bilinearly to ``shape``'s height and width unless they are ``None``."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if height is not None and width is not None:
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(img, np.uint8)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}; pass PNG or JPEG files") from err
    return array.reshape(*array.shape[:2], channels)


def preprocess_files(paths, preprocess: Preprocess, image_shape: tuple) -> np.ndarray:
    """Image files as one float32 batch, preprocessed as the run's evaluation batches were."""
    recipe = Recipe(preprocess, parse_augment(None), batch_size=1)
    transform = jax.jit(eval_transform, static_argnums=0)
    images = [transform(recipe, read_image(p, image_shape)[None])[0] for p in paths]
    return np.stack([np.asarray(x) for x in images])


def predict_files(workdir: str | pathlib.Path, paths, top: int = 5) -> list[dict]:
    """The ``top`` classes with probabilities for each image file, by a run's model (in
    float32, whatever precision it trained in)."""
    model, variables, spec = load(workdir)
    config = rundir.read_run_config(workdir)
    images = preprocess_files(paths, run_preprocess(config, spec), spec.image_shape)
    logits = model.apply(variables, images, train=False)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    results = []
    for path, p in zip(paths, probs):
        order = np.argsort(-p)[:min(top, len(p))]
        results.append({"file": str(path),
                        "top": [(spec.class_names[i], float(p[i])) for i in order]})
    return results
