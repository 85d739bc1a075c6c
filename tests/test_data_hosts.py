"""Real multi-host runs: two JAX processes on this machine (gloo collectives, two CPU devices
each) feed one global batch; it must equal the single-process batch of the same seed, and
padded evaluation must count every example once. (The streaming pipeline's per-host parts are
checked in test_data_pipeline.py, each pipeline there playing one host.)"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn import data

WORKER = r"""
import json, sys
import numpy as np
import jax
import jax.numpy as jnp
port, pid, arrays, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
from jaxcnn import data

def local(array):
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])

# The digits, from arrays the test saved: no TensorFlow in the workers, to keep them quick.
saved = np.load(arrays)
spec = data.DatasetSpec("digits", (28, 28, 1), 10, tuple("0123456789"),
                        {"train": 1438, "test": 359}, (0.17,), (0.28,))
mesh = data.data_mesh()
assert mesh.devices.size == 4
result = {}
total = jax.jit(jnp.sum)
for mode, cls in (("memory", data.DeviceDataset), ("host", data.HostDataset)):
    augment = data.parse_augment("crop:2,flip" if mode == "memory" else None)
    unit = data.make_preprocess("unit", (28, 28, 1))
    pipe = cls(spec, (saved["train_x"], saved["train_y"]), unit, augment,
               load=lambda split: (saved["test_x"], saved["test_y"]), batch_size=16,
               eval_batch_size=100, seed=5, mesh=mesh)
    batch = next(iter(pipe.train_batches(1, start_step=3)))
    rows = data.local_rows(16, pipe.mesh)
    counted = sum(float(total(b["mask"])) for b in pipe.eval_batches("test"))
    result[mode] = {"rows": [rows.start, rows.stop], "label": local(batch["label"]).tolist(),
                    "image": local(batch["image"]).tolist(), "eval_count": counted,
                    "global_shape": list(batch["image"].shape)}
json.dump(result, open(out, "w"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, tfds_dir):
    folder = tmp_path_factory.mktemp("hosts")
    (train_x, train_y), (test_x, test_y) = (data.load_split("digits", s, tfds_dir)
                                            for s in ("train", "test"))
    arrays = folder / "digits.npz"
    np.savez(arrays, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(pid), str(arrays),
                               str(folder / f"{pid}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads((folder / f"{pid}.json").read_text()) for pid in range(2)]


def reference(tfds_dir, mode: str) -> dict:
    pipe = data.make_pipeline("digits", batch_size=16, eval_batch_size=100, seed=5,
                              data_dir=tfds_dir, mode=mode,
                              augment="crop:2,flip" if mode == "memory" else None)
    batch = next(iter(pipe.train_batches(1, start_step=3)))
    return {k: np.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("mode", ["memory", "host"])
def test_the_global_batch_is_the_same_on_one_and_two_hosts(two_hosts, tfds_dir, mode):
    one_host = reference(tfds_dir, mode)
    assert [h[mode]["rows"] for h in two_hosts] == [[0, 8], [8, 16]]
    assert two_hosts[0][mode]["global_shape"] == [16, 28, 28, 1]
    image = np.concatenate([np.asarray(h[mode]["image"], np.float32) for h in two_hosts])
    label = np.concatenate([h[mode]["label"] for h in two_hosts])
    np.testing.assert_array_equal(label, one_host["label"])
    np.testing.assert_array_equal(image, one_host["image"])


@pytest.mark.parametrize("mode", ["memory", "host"])
def test_padded_evaluation_counts_each_example_once_on_two_hosts(two_hosts, mode):
    assert [h[mode]["eval_count"] for h in two_hosts] == [359.0, 359.0]
