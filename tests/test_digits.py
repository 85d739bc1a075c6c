"""The offline digits as a TFDS dataset."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

import jaxcnn.data  # noqa: F401  (registers the builder)
from jaxcnn.data import dataset_spec, load_split
from jaxcnn.data.digits import digits_to_mnist_form, split_indices


@pytest.fixture
def data_dir(tfds_dir):
    return tfds_dir


def test_tfds_load_works_offline_with_the_fixed_split(data_dir):
    train = tfds.load("digits", split="train", data_dir=data_dir, batch_size=-1,
                      as_supervised=True)
    images, labels = tfds.as_numpy(train)
    assert images.shape == (1438, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (1438,)
    test_images, test_labels = load_split("digits", "test", data_dir)
    assert test_images.shape == (359, 28, 28, 1)
    assert sorted(np.unique(test_labels)) == list(range(10))


def test_examples_are_sklearns_digits_in_mnist_form(data_dir):
    images, labels = load_split("digits", "test", data_dir)
    bunch = load_digits()
    index = split_indices(len(bunch.images), "test")
    assert index[:3].tolist() == [4, 9, 14]
    # TFDS may shuffle examples; match by content.
    expected = digits_to_mnist_form(bunch.images[index])
    order = np.lexsort(expected.reshape(len(expected), -1).T)
    got = np.lexsort(images.reshape(len(images), -1).T)
    np.testing.assert_array_equal(images[got], expected[order])
    np.testing.assert_array_equal(labels[got], bunch.target[index][order])


def test_mnist_form_centres_the_digit_in_a_20x20_box():
    ones = np.full((1, 8, 8), 16.0)
    image = digits_to_mnist_form(ones)[0, :, :, 0]
    assert image[4:24, 4:24].min() == 255
    assert image[:4].max() == 0 and image[24:].max() == 0
    assert image[:, :4].max() == 0 and image[:, 24:].max() == 0


def test_spec_reads_shape_classes_and_split_sizes(data_dir):
    spec = dataset_spec("digits", data_dir)
    assert spec.image_shape == (28, 28, 1)
    assert spec.num_classes == 10
    assert spec.split_sizes == {"train": 1438, "test": 359}
