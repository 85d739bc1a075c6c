"""Per-host data: which part of a split or of a batch each process feeds, and global arrays.

Two ways a process gets its data (big_vision and the Flax ImageNet example do the second):

- *contiguous parts of a split* (:func:`process_range`, :func:`split_for_process`): process
  ``p`` of ``P`` reads examples ``[start, stop)``, the first ``N % P`` parts one longer, as
  ``tfds.even_splits(split, P)`` cuts them; the streaming pipeline reads TFDS this way;
- *rows of each global batch* (:func:`local_rows`): every process knows the global batch, and
  feeds the rows its devices hold in the ``data`` axis of the mesh; the in-memory pipelines
  work this way, so a batch is the same whatever the number of hosts.

:func:`to_global` assembles the process-local rows into one global ``jax.Array`` with
``jax.make_array_from_process_local_data``, sharded over the mesh's ``data`` axis.
"""
from __future__ import annotations

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.errors import ConfigError

DATA_AXIS = "data"


def process_range(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``[start, stop)`` of process ``process_index``'s contiguous part of ``num_examples``."""
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process index {process_index} is not in [0, {process_count})")
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def split_for_process(split: str, process_index: int | None = None,
                      process_count: int | None = None) -> str:
    """The TFDS sub-split of ``split`` this process reads (``tfds.split_for_jax_process``)."""
    return tfds.split_for_jax_process(
        split, process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count)


def data_mesh(devices=None, axis: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (all devices, ordered by process) named ``axis``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (axis,))


def batch_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """Batch axis split over ``axis`` of ``mesh``, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(axis))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh | None, axis: str = DATA_AXIS,
                    what: str = "batch size") -> None:
    """Raises unless ``batch_size`` splits evenly over the mesh's ``axis`` and the processes."""
    if mesh is None:
        return
    if axis not in mesh.shape:
        raise ConfigError(f"the mesh has no axis {axis!r} to shard batches over "
                          f"(its axes: {', '.join(mesh.axis_names)})")
    shards = mesh.shape[axis]
    if batch_size % shards:
        raise ConfigError(f"{what} {batch_size} does not split over the {shards} devices of the "
                          f"mesh's {axis!r} axis; choose a multiple of {shards}")


def local_rows(batch_size: int, mesh: Mesh | None, axis: str = DATA_AXIS) -> slice:
    """The rows of a global batch of ``batch_size`` that this process's devices hold."""
    if mesh is None:
        return slice(0, batch_size)
    sharding = batch_sharding(mesh, axis)
    index = sharding.addressable_devices_indices_map((batch_size,))
    starts = [s[0].start or 0 for s in index.values()]
    stops = [batch_size if s[0].stop is None else s[0].stop for s in index.values()]
    start, stop = min(starts), max(stops)
    if sum(b - a for a, b in set(zip(starts, stops))) != stop - start:
        raise ConfigError("this process's devices do not hold one contiguous block of the "
                          f"mesh's {axis!r} axis; order the mesh's devices by process")
    return slice(start, stop)


def to_global(batch: dict, mesh: Mesh, axis: str = DATA_AXIS) -> dict:
    """Process-local batch rows -> global ``jax.Array``s sharded over ``axis`` of ``mesh``.

    Each array's first axis is this process's rows; the global batch has ``process rows x
    processes`` rows (processes must feed equal numbers of rows).
    """
    sharding = batch_sharding(mesh, axis)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def replicate(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """The same host array on every device of ``mesh`` (each process passes the same value),
    or on the default device without a mesh."""
    if mesh is None:
        return jax.device_put(array)
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])
