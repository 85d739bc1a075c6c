"""Data parallelism: simulated devices (jit and pmap) and two processes on localhost (gloo)."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def equivalence(*args):
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_equivalence.py"), *args],
                         check=True, capture_output=True, text=True, env=ENV).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_lenet5_on_8_devices_trains_as_on_one_in_float32():
    report = equivalence("--devices", "8", "--model", "lenet5")
    assert report["devices"] == 8
    for mode in ("jit", "pmap"):
        assert report[mode]["sharded_over"] == 8
        # Relative difference of the whole parameter vector (a single leaf such as conv1's
        # bias, whose Adam updates are sign-like, can differ by ~1e-4 through rounding).
        assert report[mode]["whole_rel_diff"] < 1e-5, report[mode]
        assert report[mode]["eval"]["num_examples"] == 100
        assert report[mode]["eval"]["accuracy"] == report[mode]["reference_eval"]["accuracy"]
        assert report[mode]["eval"]["loss"] == pytest.approx(
            report[mode]["reference_eval"]["loss"], rel=1e-5)


def test_resnet20_with_batchnorm_on_8_devices_computes_what_one_device_does():
    # In float64 the parallel steps (global BatchNorm statistics, averaged gradients) agree
    # with one device to rounding after 20 Adam steps (5.6e-15 measured, jit and pmap).
    report = equivalence("--devices", "8", "--model", "resnet20", "--x64", "--batch", "16")
    for mode in ("jit", "pmap"):
        assert report[mode]["whole_rel_diff"] < 1e-10, report[mode]
        assert report[mode]["max_rel_diff"] < 1e-9, report[mode]
        # (evaluation batches arrive as float32 images, so eval is float32 rounding-close)
        assert report[mode]["eval"]["accuracy"] == report[mode]["reference_eval"]["accuracy"]
        assert report[mode]["eval"]["loss"] == pytest.approx(
            report[mode]["reference_eval"]["loss"], rel=1e-5)


def test_resnet20_in_float32_on_8_devices_differs_from_one_device_only_by_rounding():
    """In float32, 20 steps of resnet20 amplify rounding far beyond 1e-5, on one device too.

    Measured (whole parameter vector, relative; README "Devices and hosts"): after 1, 2, 5,
    10, 20 SGD steps (lr 0.1, momentum 0.9) the 8-device jit run differs from one device by
    1.3e-6, 1.4e-4, 7.5e-3, 2.9e-2, 6.7e-2, and a one-device run whose initial parameters
    were perturbed by one float32 rounding (2**-24) by 7.4e-8, 1.9e-5, 4.6e-3, 2.6e-2, 6.6e-2:
    early training of this network is chaotic (in float64 too: 3.7e-17 after one step,
    6.9e-4 after 20). With Adam the first step already differs by 4.4e-5 (near-zero gradients
    whose sign flips move by a whole lr; 1.5e-6 with eps 1e-3), 1.1e-2 after 20. A real
    difference, such as per-device instead of global BatchNorm statistics, shows at step 1.
    """
    report = equivalence("--devices", "8", "--model", "resnet20", "--optimizer", "sgd",
                         "--at", "1", "--steps", "10", "--modes", "jit,pmap,perturbed")
    perturbed = report["perturbed"]["whole_rel_diff"]
    for mode in ("jit", "pmap"):
        first = report[mode]["by_step"]["1"]
        assert first["params"] < 1e-5 and first["batch_stats"] < 1e-6, report[mode]
        # After 10 steps (to keep CI short): no further from one device than one rounding
        # of the start leads to (2.9e-2 against 2.6e-2 measured).
        assert report[mode]["whole_rel_diff"] < 4 * perturbed, (report[mode], perturbed)


def test_ghost_batchnorm_on_4_devices_computes_statistics_per_device():
    # Per-device statistics under jit and pmap equal one device's per-group statistics
    # (checked by hand in the next test), in float64 to rounding.
    report = equivalence("--devices", "4", "--model", "resnet20", "--x64", "--batch", "16",
                         "--steps", "3", "--ghost")
    for mode in ("jit", "pmap"):
        assert report[mode]["whole_rel_diff"] < 1e-10, report[mode]
        assert report[mode]["by_step"]["3"]["batch_stats"] < 1e-10, report[mode]


def test_ghost_batchnorm_groups_normalise_and_average_statistics_per_group():
    import flax.linen as nn
    import jax
    import numpy as np
    import optax

    from jaxcnn.models.layers import torch_batch_norm
    from jaxcnn.train import create_train_state, train_step

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = torch_batch_norm(train, name="bn")(x)
            return nn.Dense(3, name="head")(x.reshape((x.shape[0], -1)))

    rng = np.random.default_rng(0)
    groups, per_group = 4, 3
    # Groups with their own offsets and spreads: per-group statistics differ from global ones.
    x = rng.standard_normal((groups, per_group, 2, 2, 2)) * rng.uniform(0.5, 3, (groups, 1, 1, 1, 1))
    x = (x + 5 * rng.standard_normal((groups, 1, 1, 1, 2))).astype(np.float32)
    labels = rng.integers(0, 3, groups * per_group).astype(np.int32)
    state = create_train_state(Net(), (2, 2, 2), optax.sgd(0.0), seed=0)
    batch = {"image": x.reshape(-1, 2, 2, 2), "label": labels}
    new, sums = jax.jit(lambda s, b: train_step(s, b, ghost_groups=groups))(state, batch)

    mean = x.mean(axis=(1, 2, 3))                 # [group, channel]
    var = x.var(axis=(1, 2, 3))                   # biased, as BatchNorm normalises with
    stats = new.batch_stats["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean.mean(0), rtol=1e-5)  # momentum 0.9
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var.mean(0), rtol=1e-5)
    assert not np.allclose(stats["var"], 0.9 + 0.1 * x.var(axis=(0, 1, 2, 3)), rtol=1e-2)
    # The forward pass normalised each group by its own statistics.
    normed = (x - mean[:, None, None, None]) / np.sqrt(var[:, None, None, None] + 1e-5)
    params = jax.device_get(state.params)
    normed = normed * params["bn"]["scale"] + params["bn"]["bias"]
    logits = normed.reshape(len(labels), -1) @ params["head"]["kernel"] + params["head"]["bias"]
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(len(labels)), labels].sum()
    assert float(sums["loss_sum"]) == pytest.approx(expected, rel=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_with_two_devices_each_train_mnist_as_one_process(tmp_path, shared_data,
                                                                        tfds_dir):
    # benchmarks/multiprocess_mnist.py runs `jaxcnn train` as 2 processes x 2 CPU devices
    # (gloo) and as 1 process x 1 device on the same global batches of MNIST, built from the
    # original files; here 2 epochs of their first 12 batches of 64, saving every 5 steps
    # (the full epoch: see the README).
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "multiprocess_mnist.py"), "--batch-size",
         "64", "--epochs", "2", "--max-steps", "12", "--checkpoint-every", "5", "--manual-dir",
         str(shared_data / "mnist"), "--data-dir", tfds_dir, "--out", str(tmp_path),
         "--timeout", "900"], capture_output=True, text=True, env=ENV, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    report = json.loads(out[out.index("{"):])
    assert report["devices"] == {"process0": [2, 4], "process1": [2, 4], "single": [1, 1]}
    # Both processes end with bitwise identical parameters (read from their own devices)...
    assert all(report["local_replicas_equal"].values())
    assert report["identical_across_processes"]
    assert report["sha256"]["process0"] == report["sha256"]["process1"]
    # ...equal to one process's within 1e-5, with the same evaluation.
    assert report["rel_diff_vs_single"] < 1e-5, report
    assert report["test_accuracy"]["two_processes"] == report["test_accuracy"]["one_process"]
    assert report["train_loss"]["two_processes"] == pytest.approx(
        report["train_loss"]["one_process"], rel=1e-5)
    assert report["test_accuracy"]["one_process"][-1] > 0.5  # it learned from MNIST
    # Saves at steps 5, 10, 12 (epoch 1), 15, 20, 24: newest 3 kept, best too (no deadlock
    # between the two Orbax managers' barriers).
    assert report["checkpoints"] == ["15", "20", "24", "best"]
    # Only process 0 wrote the run directory (and the recording sees writes: process 0's).
    writes = report["writes"]
    assert writes["process1"] == [] and report["per_process_entries"] == []
    for name in ("config.json.tmp", "history.json.tmp", "curves.png", "jaxcnn_manifest.json"):
        assert any(w.startswith("open-for-writing") and name in w for w in writes["process0"])
    assert report["printed_by_process1"] == []
    workdir = pathlib.Path(report["run_directory"])
    assert len(json.loads((workdir / "history.json").read_text())) == 2
    assert len(list(workdir.glob("events.out.tfevents*"))) == 1


def test_a_batch_that_does_not_divide_over_the_devices_is_refused(tmp_path, tfds_dir):
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "jaxcnn"), "train", "--num-cpu-devices", "3",
         "--workdir", str(tmp_path / "x"), "--data-dir", tfds_dir], env=ENV,
        capture_output=True, text=True)
    assert result.returncode == 2
    assert "global batch size 32 does not divide over 3 devices" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_coordinator_that_never_answers_fails_within_the_timeout(tmp_path):
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "jaxcnn"), "train", "--coordinator",
         f"localhost:{free_port()}", "--num-processes", "2", "--process-id", "1",
         "--distributed-timeout", "5", "--workdir", str(tmp_path / "x")],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "process 1 of 2 could not join the coordinator" in result.stderr
