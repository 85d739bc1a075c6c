"""Streaming images of many sizes (the ImageNet case) with ImageNet-style crops, on a small
TFDS dataset of JPEG and PNG images of random sizes built here."""
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcnn import data
from jaxcnn.errors import InputShapeError

SIZES = [(40, 64), (80, 50), (33, 33), (60, 90), (48, 72), (100, 40)] * 4


def encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt)
    return out.getvalue()


class JaxcnnTestVarsize(tfds.core.GeneratorBasedBuilder):
    """24 train and 6 test colour images of six sizes, alternately JPEG and PNG."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=3)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(SIZES, 0),
                "test": self._generate_examples(SIZES[:6], 1)}

    def _generate_examples(self, sizes, seed):
        rng = np.random.default_rng(seed)
        for i, (h, w) in enumerate(sizes):
            base = rng.integers(0, 256, (1, 1, 3), np.uint8)  # one colour per image
            image = np.broadcast_to(base, (h, w, 3)).copy()
            yield i, {"image": encoded(image, "JPEG" if i % 2 else "PNG"), "label": i % 3}


@pytest.fixture(scope="module")
def varsize(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("varsize"))
    JaxcnnTestVarsize(data_dir=folder).download_and_prepare()
    return folder


def make(folder, **kwargs):
    options = dict(batch_size=8, eval_batch_size=4, seed=1, data_dir=folder,
                   preprocess="imagenet", image_size=32)
    return data.make_pipeline("jaxcnn_test_varsize", **{**options, **kwargs})


def test_varying_sizes_stream_with_imagenet_crops(varsize):
    spec = data.dataset_spec("jaxcnn_test_varsize", varsize)
    assert spec.image_shape == (None, None, 3) and not spec.fixed_shape
    assert spec.input_shape() == (224, 224, 3) and spec.input_shape(32) == (32, 32, 3)
    pipeline = make(varsize, augment="flip")
    assert pipeline.mode == "stream" and pipeline.input_shape == (32, 32, 3)
    first = [{k: np.asarray(v) for k, v in b.items()} for b in pipeline.train_batches(1)]
    assert len(first) == 3 and first[0]["image"].shape == (8, 32, 32, 3)
    again = [np.asarray(b["image"]) for b in make(varsize, augment="flip").train_batches(1)]
    assert all(np.array_equal(a["image"], b) for a, b in zip(first, again))
    # Flat-colour images stay flat through crop and resize: per-channel normalised constants.
    image = first[0]["image"][0]
    assert np.ptp(image.reshape(-1, 3), axis=0).max() < 0.05


def test_eval_uses_centre_crops_and_counts_each_image_once(varsize):
    pipeline = make(varsize)
    out = [{k: np.asarray(v) for k, v in b.items()} for b in pipeline.eval_batches("test")]
    assert len(out) == 2 and all(b["image"].shape == (4, 32, 32, 3) for b in out)
    mask = np.concatenate([b["mask"] for b in out])
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert sorted(np.concatenate([b["label"] for b in out])[:6].tolist()) == [0, 0, 1, 1, 2, 2]


def test_varying_sizes_cannot_be_held_in_memory(varsize):
    with pytest.raises(InputShapeError, match=r"varying shape \(None, None, 3\)"):
        make(varsize, mode="memory")
    with pytest.raises(InputShapeError, match="preprocess='imagenet'"):
        make(varsize, preprocess="unit", image_size=None)
    with pytest.raises(InputShapeError, match="jaxcnn_test_varsize"):
        data.load_split("jaxcnn_test_varsize", "train", varsize)
