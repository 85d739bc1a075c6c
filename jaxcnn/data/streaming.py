"""The streaming pipeline: tf.data from a prepared TFDS dataset, for datasets too big to hold.

Per host: each process reads only its own part of a split (``tfds.split_for_jax_process``:
the tfrecord shards and the skip/take within them that TFDS's reader would use), shuffles
shards and examples with seeds of ``(seed, epoch)``, decodes and crops in parallel
(``num_parallel_calls=AUTOTUNE``, deterministic order), batches its rows of every global batch
and prefetches. TensorFlow is kept off the accelerators (``tf.config.set_visible_devices([],
'GPU')``), so it never takes their memory. The uint8 batches then go to the device, where the
augmentation and the normalisation run in one jitted call (:mod:`jaxcnn.data.interface`).

ImageNet geometry (``preprocess='imagenet'``) runs here, in TensorFlow, since the images come
in many sizes: for training a random box of 8%-100% of the area and aspect ratio 3/4-4/3
(``stateless_sample_distorted_bounding_box``, seeded by ``(seed, epoch, example)``), decoded
with ``decode_and_crop_jpeg`` when the bytes are JPEG; for evaluation the central crop of side
``shorter side * 224 / 256``; both resized to ``image_size`` (bilinear, antialiased), rounded
back to uint8 (as in the Flax ImageNet example's input pipeline).

Determinism: for a given number of processes, a seed gives the same batches on every run. Across
process counts each host streams a different part of the data, so the batches differ (each
example is still seen once per epoch); the in-memory pipelines are the ones whose batches do
not depend on the host count.
"""
from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxcnn.data import sharding
from jaxcnn.data.augment import Augment
from jaxcnn.data.datasets import DatasetSpec, tensorflow_on_cpu
from jaxcnn.data.interface import Pipeline, Recipe, eval_transform, masked, train_transform
from jaxcnn.data.preprocess import EVAL_RESIZE_RATIO, RRC_AREA, RRC_RATIO, Preprocess
from jaxcnn.errors import ConfigError, DataError

SHUFFLE_BUFFER = 16_384


class StreamingDataset(Pipeline):
    """tf.data pipeline over a prepared TFDS ``builder``.

    Args beyond :class:`DeviceDataset`'s: ``builder`` (prepared), ``shuffle_buffer`` (examples
    held for shuffling), ``process_index``/``process_count`` (default: JAX's).
    """

    mode = "stream"

    def __init__(self, spec: DatasetSpec, builder, preprocess: Preprocess, augment: Augment, *,
                 batch_size: int, eval_batch_size: int | None = None, seed: int = 0,
                 mesh=None, data_axis: str = sharding.DATA_AXIS, train_split: str = "train",
                 shuffle_buffer: int = SHUFFLE_BUFFER, process_index: int | None = None,
                 process_count: int | None = None):
        self._tf = tensorflow_on_cpu()
        self.process_count = jax.process_count() if process_count is None else process_count
        self.process_index = jax.process_index() if process_index is None else process_index
        eval_batch_size = eval_batch_size or batch_size
        for what, size in (("batch size", batch_size), ("eval batch size", eval_batch_size)):
            if isinstance(size, int) and size % self.process_count:
                raise ConfigError(f"{what} {size} does not split over {self.process_count} "
                                  "processes; choose a multiple of the process count")
        per_host = spec.split_size(train_split) // self.process_count
        super().__init__(spec, preprocess, augment, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, seed=seed,
                         num_train=per_host * self.process_count, mesh=mesh,
                         data_axis=data_axis, train_split=train_split)
        self.builder, self.shuffle_buffer = builder, shuffle_buffer
        _check_layout(spec.name, builder)
        self.local_batch = batch_size // self.process_count
        self.local_eval_batch = self.eval_batch_size // self.process_count
        # Geometry is done by TensorFlow; without a mesh a batch holds this process's rows.
        rows = None if mesh is not None else (self.process_index * self.local_batch,
                                              self.local_batch)
        self._train = Recipe(preprocess, augment, self.batch_size, geometry=False, rows=rows)
        self._eval = Recipe(preprocess, augment, self.eval_batch_size, geometry=False)
        self._seed = jnp.uint32(self.seed)
        self._finish_train = self._jit(_train_finish)
        self._finish_eval = self._jit(_eval_finish)

    # --- TensorFlow side: read, decode, crop (uint8 out) ---

    def _part(self, split: str):
        return sharding.split_for_process(split, self.process_index, self.process_count)

    def _records(self, split: str, shuffle_seed: int | None):
        """This process's serialized examples of ``split``, shards shuffled by ``shuffle_seed``.

        Reads TFDS's tfrecord shards directly, with the skip/take of each shard that TFDS's
        own reader would use for this sub-split (``SplitInfo.file_instructions``); parsing
        whole batches with ``tf.io.parse_example`` is several times faster than TFDS's
        example-by-example ``as_dataset`` on small images.
        """
        tf = self._tf
        instructions = list(self.builder.info.splits[self._part(split)].file_instructions)
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(instructions))
            instructions = [instructions[i] for i in order]
        files = tf.data.Dataset.from_tensor_slices((
            [str(i.filename) for i in instructions],
            np.array([i.skip for i in instructions], np.int64),
            np.array([i.take for i in instructions], np.int64)))
        return files.interleave(
            lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip).take(take),
            cycle_length=min(16, len(instructions)), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)

    def _parse(self, serialized):
        """``{"image": encoded bytes, "label": int32}`` from serialized examples (any rank)."""
        tf = self._tf
        features = {"image": tf.io.FixedLenFeature([], tf.string),
                    "label": tf.io.FixedLenFeature([], tf.int64)}
        parse = tf.io.parse_example if serialized.shape.rank else tf.io.parse_single_example
        example = parse(serialized, features)
        return example["image"], tf.cast(example["label"], tf.int32)

    def _decode_batch(self, encoded):
        tf = self._tf
        spec = tf.TensorSpec(self.spec.image_shape, tf.uint8)
        return tf.map_fn(self._decode, encoded, fn_output_signature=spec)

    def _decode(self, data):
        tf = self._tf
        channels = self.spec.image_shape[-1]
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        if self.preprocess.crop_size is None:
            image = tf.ensure_shape(image, self.spec.image_shape)
        return image

    def _crop(self, data, box_fn):
        """Decodes the box ``box_fn(shape) -> (top, left, height, width)`` and resizes it."""
        tf = self._tf
        channels = self.spec.image_shape[-1]

        def jpeg():
            top, left, height, width = box_fn(tf.image.extract_jpeg_shape(data))
            return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, height, width]),
                                                 channels=channels)

        def other():
            image = self._decode(data)
            top, left, height, width = box_fn(tf.shape(image))
            return image[top:top + height, left:left + width]

        crop = tf.cond(tf.io.is_jpeg(data), jpeg, other) if channels in (1, 3) else other()
        size = self.preprocess.crop_size
        resized = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    def _random_box(self, seed):
        tf = self._tf

        def box(shape):
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                shape, tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=seed,
                min_object_covered=0.1, aspect_ratio_range=RRC_RATIO, area_range=RRC_AREA,
                max_attempts=10, use_image_if_no_bounding_boxes=True)
            return begin[0], begin[1], size[0], size[1]

        return box

    def _center_box(self, shape):
        tf = self._tf
        height, width = shape[0], shape[1]
        side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) / EVAL_RESIZE_RATIO, tf.int32)
        return (height - side) // 2, (width - side) // 2, side, side

    def _epoch_seeds(self, epoch: int) -> tuple[int, int]:
        state = np.random.SeedSequence([self.seed, epoch, self.process_index]).generate_state(2)
        return int(state[0] >> 1), int(state[1] >> 1)

    def local_train_dataset(self, epoch: int, start_step: int = 0):
        """This process's tf.data stream of uint8 training batches for ``epoch``."""
        tf = self._tf
        file_seed, example_seed = self._epoch_seeds(epoch)
        ds = self._records(self.train_split, file_seed)
        ds = ds.shuffle(self.shuffle_buffer, seed=example_seed, reshuffle_each_iteration=False)
        first = start_step * self.local_batch
        ds = ds.skip(first)  # skipping serialized records: nothing is decoded for a resume
        if self.preprocess.crop_size is None:  # one shape: parse and decode whole batches
            ds = ds.batch(self.local_batch, drop_remainder=True)
            ds = ds.map(self._batch_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:  # per example: a random crop seeded by (seed, epoch, position in the stream)
            def prepare(index, record):
                data, label = self._parse(record)
                seed = tf.stack([tf.constant(example_seed, tf.int64), index])
                return {"image": self._crop(data, self._random_box(seed)), "label": label}

            ds = ds.enumerate(first).map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                                         deterministic=True)
            ds = ds.batch(self.local_batch, drop_remainder=True)
        return ds.take(self.steps_per_epoch - start_step).prefetch(tf.data.AUTOTUNE)

    def _batch_of(self, records):
        data, label = self._parse(records)
        return {"image": self._decode_batch(data), "label": label}

    def local_eval_dataset(self, split: str):
        """This process's part of ``split``, uint8 batches (the last one short)."""
        tf = self._tf
        ds = self._records(split, None)
        if self.preprocess.crop_size is None:
            ds = ds.batch(self.local_eval_batch).map(self._batch_of,
                                                     num_parallel_calls=tf.data.AUTOTUNE,
                                                     deterministic=True)
        else:
            def prepare(record):
                data, label = self._parse(record)
                return {"image": self._crop(data, self._center_box), "label": label}

            ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(self.local_eval_batch)
        return ds.prefetch(tf.data.AUTOTUNE)

    # --- device side: augment and normalise (jitted) ---

    def _to_device(self, batch: dict) -> dict:
        return batch if self.mesh is None else sharding.to_global(batch, self.mesh, self.data_axis)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        self._check_start(start_step)
        epoch_ = jnp.int32(epoch)
        stream = self.local_train_dataset(epoch, start_step).as_numpy_iterator()
        for step, batch in enumerate(stream, start_step):
            batch = self._to_device(batch)
            yield self._finish_train(batch["image"], batch["label"], self._seed, epoch_,
                                     jnp.int32(step), static=self._train)

    def num_eval_batches(self, split: str = "test") -> int:
        most = -(-self.num_examples(split) // self.process_count)  # the largest host part
        return -(-most // self.local_eval_batch)

    def eval_batches(self, split: str = "test") -> Iterator[dict]:
        """Every example of ``split`` once over all hosts; every host yields the same number
        of batches, padded with ``mask`` 0."""
        size, shape = self.local_eval_batch, self.input_shape
        count = 0
        for batch in self.local_eval_dataset(split).as_numpy_iterator():
            yield self._eval_step(batch["image"], batch["label"], size)
            count += 1
        for _ in range(count, self.num_eval_batches(split)):  # hosts with a shorter part
            yield self._eval_step(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int32), size)

    def _eval_step(self, image, label, size):
        real = len(image)
        pad = size - real
        mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
        batch = self._to_device({"image": image, "label": label, "mask": mask})
        return self._finish_eval(batch["image"], batch["label"], batch["mask"], static=self._eval)


def _train_finish(image, label, seed, epoch, step, *, static: Recipe):
    return {"image": train_transform(static, seed, epoch, step, image), "label": label}


def _eval_finish(image, label, mask, *, static: Recipe):
    return masked({"image": eval_transform(static, image), "label": label}, mask > 0)


def _check_layout(name: str, builder) -> None:
    """Raises unless the prepared data is tfrecord shards with encoded images, int labels."""
    info = builder.info
    serialized = info.features.get_serialized_info()
    image, label = serialized.get("image"), serialized.get("label")
    ok = (info.file_format == tfds.core.FileFormat.TFRECORD and image is not None
          and label is not None and tuple(image.shape) == () and image.tf_dtype.name == "string"
          and tuple(label.shape) == () and label.tf_dtype.is_integer)
    if not ok:
        raise DataError(f"dataset {name!r}: the streaming pipeline reads tfrecord shards of "
                        f"encoded images and integer labels; this one is stored as "
                        f"{info.file_format} with image {image} and label {label}")
