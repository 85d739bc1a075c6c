"""Setting up JAX's devices and processes before anything touches them.

* ``num_cpu_devices``: N simulated CPU devices (``jax_num_cpu_devices``), so data parallelism
  can be developed and tested on a laptop.
* ``coordinator``/``num_processes``/``process_id``: a multi-process run through
  ``jax.distributed.initialize``; on CPU the processes exchange data with the gloo
  collectives. ``coordinator="auto"`` lets JAX read the cluster (TPU pods, SLURM).
  Joining waits at most ``timeout`` seconds, then fails with the numbers involved.
"""
from __future__ import annotations

import socket
import time

import jax

from jaxcnn.errors import ConfigError


def wait_for_coordinator(address: str, timeout: float, process_id: int, num_processes: int):
    """Waits up to ``timeout`` s for process 0's coordinator to accept connections.

    JAX's own client aborts the whole process when the coordinator never answers; probing
    first turns that into a clear error.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host or "localhost", int(port)), timeout=1.0):
                return
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"process {process_id} of {num_processes} could not join the coordinator "
                    f"at {address} within {timeout:g}s (nothing accepts connections there); "
                    "start process 0 with the same --coordinator and --num-processes") from None
            time.sleep(0.25)


def setup_runtime(num_cpu_devices: int | None = None, coordinator: str | None = None,
                  num_processes: int | None = None, process_id: int | None = None,
                  timeout: int = 120) -> None:
    if num_cpu_devices is not None:
        if num_cpu_devices < 1:
            raise ConfigError(f"--num-cpu-devices must be >= 1, got {num_cpu_devices}")
        jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    if coordinator is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ConfigError("--num-processes/--process-id need --coordinator HOST:PORT "
                              "(the address of process 0)")
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize(initialization_timeout=timeout)
        return
    if num_processes is None or process_id is None:
        raise ConfigError("--coordinator needs --num-processes N and --process-id I")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in 0..{num_processes - 1} for "
                          f"--num-processes {num_processes}, got {process_id}")
    if process_id != 0:
        wait_for_coordinator(coordinator, timeout, process_id, num_processes)
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    except Exception as err:  # the runtime raises XlaRuntimeError/RuntimeError variants
        raise ConfigError(
            f"process {process_id} of {num_processes} could not join the coordinator at "
            f"{coordinator} within {timeout}s ({str(err).splitlines()[0]}); start every "
            "process with the same --coordinator and --num-processes") from err
