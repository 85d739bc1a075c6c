"""The offline default dataset: scikit-learn's 1,797 handwritten 8x8 digits, as a TFDS dataset.

The images are the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin and
Kaynak, 1998), 8x8 blocks with values 0..16, bundled inside scikit-learn so they load with no
network. This builder brings them to MNIST's form: each 8x8 image is enlarged bilinearly to
20x20, placed in the centre of a 28x28 canvas (MNIST centres its digits in a 20x20 box) and
scaled to uint8 0..255.

The split is fixed and independent of any library's random generator: every fifth example
(index % 5 == 4) is the test set, 359 images; the other 1,438 train.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 28
DIGIT_BOX = 20
TEST_EVERY = 5


def digits_to_mnist_form(images: np.ndarray) -> np.ndarray:
    """Maps ``(N, 8, 8)`` images valued 0..16 to ``(N, 28, 28, 1)`` uint8 images valued 0..255."""
    from scipy import ndimage  # scikit-learn's own dependency

    zoom = DIGIT_BOX / images.shape[1]
    enlarged = np.stack([ndimage.zoom(img, zoom, order=1, mode="nearest") for img in images])
    enlarged = np.clip(enlarged * (255.0 / 16.0), 0, 255)
    margin = (IMAGE_SIZE - DIGIT_BOX) // 2
    canvas = np.zeros((len(images), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    canvas[:, margin:margin + DIGIT_BOX, margin:margin + DIGIT_BOX, 0] = np.rint(enlarged)
    return canvas


def split_indices(count: int, split: str) -> np.ndarray:
    """Indices of ``split`` ('train' or 'test') among ``count`` examples: test is i % 5 == 4."""
    index = np.arange(count)
    is_test = index % TEST_EVERY == TEST_EVERY - 1
    return index[is_test] if split == "test" else index[~is_test]


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits at 28x28x1, a fixed 1,438/359 train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 20x20 bilinear enlargement on a 28x28 canvas."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation="Alpaydin, E. and Kaynak, C. (1998). Optical Recognition of Handwritten "
                     "Digits. UCI Machine Learning Repository.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships inside scikit-learn
        return {"train": self._generate_examples("train"),
                "test": self._generate_examples("test")}

    def _generate_examples(self, split: str):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = digits_to_mnist_form(bunch.images)
        for i in split_indices(len(images), split):
            yield int(i), {"image": images[i], "label": int(bunch.target[i])}
