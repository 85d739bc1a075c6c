"""The data layer: TFDS datasets by name (offline from the original files too), preprocessing,
augmentation, per-host sharding, and input pipelines (in memory on the device, or streamed).

::

    spec = data.dataset_spec("mnist", data_dir, manual_dir="../shared/data/mnist")
    pipeline = data.make_pipeline("mnist", batch_size=128, seed=0, data_dir=data_dir,
                                  manual_dir="../shared/data/mnist", preprocess="per_channel",
                                  augment="rotate:10,translate:2")
    for batch in pipeline.train_batches(epoch, start_step):  # {"image", "label"}
        ...
    for batch in pipeline.eval_batches("test"):               # {"image", "label", "mask"}
        ...

The in-memory helpers of :mod:`jaxcnn.data.batches` remain for simple scripts.
"""
from jaxcnn.data.augment import AUGMENTATIONS, Augment, parse_augment
from jaxcnn.data.batches import epoch_permutation, eval_batches, steps_per_epoch, train_batches
from jaxcnn.data.datasets import (DatasetSpec, dataset_spec, get_builder, load_split,
                                  prepared_builder)
from jaxcnn.data.device import DeviceDataset
from jaxcnn.data.host import HostDataset
from jaxcnn.data.interface import Pipeline
from jaxcnn.data.pipeline import MODES, check_image_shape, choose_mode, make_pipeline
from jaxcnn.data.preprocess import PREPROCESSORS, Preprocess, make_preprocess
from jaxcnn.data.sharding import (data_mesh, local_rows, process_range, split_for_process,
                                  to_global)
from jaxcnn.data.streaming import StreamingDataset

__all__ = ["AUGMENTATIONS", "Augment", "DatasetSpec", "DeviceDataset", "HostDataset", "MODES",
           "PREPROCESSORS", "Pipeline", "Preprocess", "StreamingDataset", "check_image_shape",
           "choose_mode", "data_mesh", "dataset_spec", "epoch_permutation", "eval_batches",
           "get_builder", "load_split", "local_rows", "make_pipeline", "make_preprocess",
           "parse_augment", "prepared_builder", "process_range", "split_for_process",
           "steps_per_epoch", "to_global", "train_batches"]
