"""Data parallelism over the devices of one host and of many: ``jit`` with shardings, or ``pmap``.

The steps of :mod:`jaxcnn.train.steps` know nothing of devices; :class:`DataParallel` wraps
them. Both modes split every global batch over a ``data`` axis and keep one copy of the
train state per device, so they train alike:

* ``jit`` (the default): a :class:`jax.sharding.Mesh` with one ``data`` axis; batches are
  global ``jax.Array``s sharded on it (built from each process's rows with
  ``jax.make_array_from_process_local_data``), the state replicated, its buffers donated.
  XLA partitions the step; BatchNorm statistics are computed over the global batch
  (synchronised BatchNorm) because the model sees one global batch.
* ``pmap`` (the classic): batches reshaped to ``[local devices, per device, ...]``, gradients
  averaged with ``lax.pmean`` over the ``data`` axis, BatchNorm statistics synchronised over it.

``ghost_bn=True`` instead keeps BatchNorm statistics per device (each device normalises its
own slice, as data-parallel training did before synchronised BatchNorm) in either mode.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.errors import ConfigError
from jaxcnn.models.conv import without_native_convolution
from jaxcnn.models.layers import batch_norm_axis
from jaxcnn.train.steps import eval_step, train_step

AXIS = "data"
MODES = ("jit", "pmap")


def check_divisible(global_batch: int, devices: int, what: str = "batch size") -> None:
    if global_batch % devices:
        lower = global_batch - global_batch % devices
        raise ConfigError(
            f"the global {what} {global_batch} does not divide over {devices} devices; "
            f"choose a multiple of {devices} (e.g. {lower or devices} or {lower + devices})")


class DataParallel:
    """Compiles the steps for all devices and moves states and batches onto them."""

    def __init__(self, mode: str = "jit", ghost_bn: bool = False, dtype=None,
                 nonfinite: str = "stop", devices=None):
        if mode not in MODES:
            raise ConfigError(f"parallel mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.ghost_bn, self.dtype, self.nonfinite = mode, ghost_bn, dtype, nonfinite
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))
        # pmap's layout: a leading axis of one entry per local device.
        self.stacked = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)),
                                     PartitionSpec(AXIS))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch(self, global_batch: int, what: str = "batch size") -> None:
        check_divisible(global_batch, self.num_devices, what)

    def local_rows(self, global_batch: int) -> slice:
        """The rows of a global batch that this process feeds (its devices' share)."""
        per_process = global_batch // jax.process_count()
        start = jax.process_index() * per_process
        return slice(start, start + per_process)

    # -- compiling --------------------------------------------------------------------------
    def _partitioned(self, step):
        """``step`` traced for XLA's partitioner: over several devices without the oneDNN
        convolution, which XLA would run unsplit on every device."""
        if self.num_devices == 1:
            return step

        @functools.wraps(step)
        def traced(*args, **kwargs):
            with without_native_convolution():
                return step(*args, **kwargs)

        return traced

    def train_step(self):
        if self.mode == "jit":
            step = functools.partial(train_step, nonfinite=self.nonfinite, dtype=self.dtype,
                                     ghost_groups=self.num_devices if self.ghost_bn else 0)
            return jax.jit(self._partitioned(step), in_shardings=(self.replicated, self.sharded),
                           out_shardings=(self.replicated, self.replicated), donate_argnums=0)

        def step(state, batch):
            with batch_norm_axis(None if self.ghost_bn else AXIS):
                return train_step(state, batch, nonfinite=self.nonfinite, axis_name=AXIS,
                                  dtype=self.dtype)

        return jax.pmap(step, axis_name=AXIS, devices=self.devices, donate_argnums=0)

    def eval_step(self):
        if self.mode == "jit":
            step = functools.partial(eval_step, dtype=self.dtype)
            return jax.jit(self._partitioned(step), in_shardings=(self.replicated, self.sharded),
                           out_shardings=self.replicated)
        step = functools.partial(eval_step, axis_name=AXIS, dtype=self.dtype)
        return jax.pmap(step, axis_name=AXIS, devices=self.devices)

    # -- moving data ------------------------------------------------------------------------
    def put_state(self, state):
        """One copy of ``state`` per device (a host/single-device state in)."""
        if self.mode == "jit":
            return jax.device_put(state, self.replicated)
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(self.local_devices),
                                                                       *np.shape(x))),
                                     self.stacked), state)

    def get_state(self, state):
        """The state as one copy: what checkpoints and evaluation on the host read."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def put_batch(self, local_batch: dict) -> dict:
        """This process's rows of a global batch, onto the devices."""
        if self.mode == "jit":
            global_rows = len(next(iter(local_batch.values()))) * jax.process_count()
            return {k: jax.make_array_from_process_local_data(
                        self.sharded, np.asarray(v), (global_rows, *np.shape(v)[1:]))
                    for k, v in local_batch.items()}
        count = len(self.local_devices)
        return {k: jax.device_put(np.reshape(v, (count, -1, *np.shape(v)[1:])), self.stacked)
                for k, v in local_batch.items()}

    def to_host(self, tree):
        """Metric sums (replicated over devices and processes) as host NumPy values."""
        def one(x):
            if self.mode == "pmap":
                x = x[0]
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                x = x.addressable_data(0)
            return np.asarray(x)

        return jax.tree.map(one, tree)
