"""The data layer: TFDS datasets by name, the offline digits, and in-memory batching."""
from jaxcnn.data.batches import epoch_permutation, eval_batches, steps_per_epoch, train_batches
from jaxcnn.data.datasets import DatasetSpec, dataset_spec, get_builder, load_split

__all__ = ["DatasetSpec", "dataset_spec", "epoch_permutation", "eval_batches", "get_builder",
           "load_split", "steps_per_epoch", "train_batches"]
