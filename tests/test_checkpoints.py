"""Checkpoints and fault tolerance: exact resume, preemption, damage, divergence, inference."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.cli import main
from jaxcnn.configs.loading import load_config
from jaxcnn.errors import DivergedError, RunDirError
from jaxcnn.train import loop
from jaxcnn.train.checkpoint import Checkpoints

STEPS_PER_EPOCH = 44  # 1,438 training digits // 32


def config_for(tfds_dir, **overrides):
    config = load_config()
    config.data_dir = tfds_dir
    config.epochs = 2
    for key, value in overrides.items():
        config[key] = value
    return config


def final_tree(workdir, tfds_dir, **overrides):
    config = loop.prepare(config_for(tfds_dir, **overrides), workdir, resume=True).config
    state = loop.new_state(config, data.dataset_spec("digits", tfds_dir))
    checkpoints = Checkpoints(workdir)
    try:
        state, _ = loop.restore(checkpoints, state, 10)
    finally:
        checkpoints.close()
    return jax.device_get(state.checkpoint_tree())


def wrap_train_batches(monkeypatch, transform):
    """Makes the fit loop's pipeline pass every training batch through ``transform(n, batch)``,
    ``n`` counting the batches handed out so far in the process."""
    real = data.make_pipeline
    handed = {"n": 0}

    def make_pipeline(*args, **kwargs):
        pipeline = real(*args, **kwargs)
        train_batches = pipeline.train_batches

        def batches(*a, **k):
            for batch in train_batches(*a, **k):
                handed["n"] += 1
                yield transform(handed["n"], batch)

        pipeline.train_batches = batches
        return pipeline

    monkeypatch.setattr(data, "make_pipeline", make_pipeline)


def interrupt_after(monkeypatch, count):
    """Sends this process SIGTERM while training batch ``count + 1`` is handed out."""
    def transform(n, batch):
        if n == count + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    wrap_train_batches(monkeypatch, transform)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tfds_dir):
    workdir = tmp_path_factory.mktemp("runs") / "whole"
    loop.fit(loop.prepare(config_for(tfds_dir), workdir), log=lambda *a: None)
    return workdir


def test_sigterm_checkpoints_the_step_and_resume_is_bitwise_exact(
        tmp_path, tfds_dir, uninterrupted, monkeypatch):
    workdir = tmp_path / "cut"
    interrupt_after(monkeypatch, 30)
    outcome = loop.fit(loop.prepare(config_for(tfds_dir), workdir), log=lambda *a: None)
    # The signal arrives while batch 31 is handed out; that step completes, then it stops.
    assert outcome.stopped_by == "SIGTERM" and outcome.step == 31
    checkpoints = Checkpoints(workdir)
    assert checkpoints.latest_step() == 31
    checkpoints.close()
    monkeypatch.undo()
    resumed = loop.fit(loop.prepare(config_for(tfds_dir), workdir, resume=True),
                       log=lambda *a: None)
    assert resumed.stopped_by is None and resumed.step == 2 * STEPS_PER_EPOCH
    ours, reference = final_tree(workdir, tfds_dir), final_tree(uninterrupted, tfds_dir)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)  # params, batch stats, optimizer state, step, rng
    history = json.loads((workdir / "history.json").read_text())
    whole = json.loads((uninterrupted / "history.json").read_text())
    assert [r["test_accuracy"] for r in history] == [r["test_accuracy"] for r in whole]
    assert history[0]["train_loss"] == pytest.approx(whole[0]["train_loss"], rel=1e-6)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
        tmp_path, tfds_dir, uninterrupted, capsys):
    workdir = tmp_path / "damaged"
    import shutil
    shutil.copytree(uninterrupted, workdir)
    newest = workdir / "checkpoints" / str(2 * STEPS_PER_EPOCH)
    biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["eval", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint step {2 * STEPS_PER_EPOCH}" in out and "unusable" in out
    result = json.loads(out.strip().splitlines()[-1])
    first_epoch = json.loads((workdir / "history.json").read_text())[0]
    assert result["test_accuracy"] == pytest.approx(first_epoch["test_accuracy"], abs=1e-9)
    # With every checkpoint damaged: one clear error.
    older = workdir / "checkpoints" / str(STEPS_PER_EPOCH)
    for path in older.rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(path.read_bytes()[:100])
    assert main(["eval", "--workdir", str(workdir)]) == 2
    assert "no usable checkpoint" in capsys.readouterr().err


def nan_after(monkeypatch, count):
    import jax.numpy as jnp

    wrap_train_batches(monkeypatch, lambda n, batch: batch if n <= count else
                       {**batch, "image": jnp.full_like(batch["image"], jnp.nan)})


def test_nan_inputs_stop_the_run_and_keep_the_last_good_checkpoint(
        tmp_path, tfds_dir, uninterrupted, monkeypatch):
    workdir = tmp_path / "nan"
    nan_after(monkeypatch, STEPS_PER_EPOCH + 5)
    run = loop.prepare(config_for(tfds_dir), workdir)
    with pytest.raises(DivergedError, match=f"non-finite loss or gradient norm at step "
                                            f"{STEPS_PER_EPOCH + 6}.*last good checkpoint is "
                                            f"step {STEPS_PER_EPOCH}"):
        loop.fit(run, log=lambda *a: None)
    monkeypatch.undo()
    checkpoints = Checkpoints(workdir)
    assert checkpoints.latest_step() == STEPS_PER_EPOCH
    checkpoints.close()
    # The good checkpoint is intact: it equals the uninterrupted run's after epoch 1.
    ours = final_tree(workdir, tfds_dir)
    assert ours["step"] == STEPS_PER_EPOCH and ours["first_nonfinite_step"] == -1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(ours["params"]))


def test_skip_nonfinite_skips_and_counts(tmp_path, tfds_dir, monkeypatch):
    workdir = tmp_path / "skip"
    nan_after(monkeypatch, STEPS_PER_EPOCH - 4)  # the last 4 steps of epoch 1 are NaN
    config = config_for(tfds_dir, epochs=1, nonfinite="skip")
    outcome = loop.fit(loop.prepare(config, workdir), log=lambda *a: None)
    record = outcome.records[-1]
    assert record["nonfinite_steps_total"] == 4
    assert np.isfinite(record["train_loss"]) and record["test_accuracy"] > 0.5


def test_a_checkpoint_of_another_class_count_is_refused(uninterrupted, tfds_dir):
    config = config_for(tfds_dir, num_classes=5)
    state = loop.new_state(config, data.dataset_spec("digits", tfds_dir))
    checkpoints = Checkpoints(uninterrupted)
    with pytest.raises(RunDirError, match="no usable checkpoint"):
        loop.restore(checkpoints, state, 5)
    checkpoints.close()


def test_load_and_predict(uninterrupted, tmp_path, capsys, tfds_dir):
    import jaxcnn
    from PIL import Image

    model, variables, spec = jaxcnn.load(uninterrupted)
    images, labels = data.load_split("digits", "test", tfds_dir)
    logits = model.apply(variables, images[:64] / 255.0, train=False)
    assert (np.argmax(logits, -1) == labels[:64]).mean() > 0.8
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i, :, :, 0]).resize((56, 56)).convert("RGB").save(path)
        paths.append(str(path))
    capsys.readouterr()
    assert main(["predict", "--workdir", str(uninterrupted), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(paths[0])
    assert lines[0].count("%") == 5
    assert main(["predict", "--workdir", str(uninterrupted), str(tmp_path / "none.png")]) == 2


def test_a_real_sigterm_stops_jaxcnn_train_with_exit_0_and_a_checkpoint(tmp_path, tfds_dir):
    workdir = tmp_path / "term"
    cmd = [str(pathlib.Path(sys.executable).parent / "jaxcnn"), "train", "--epochs", "50",
           "--workdir", str(workdir), "--data-dir", tfds_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.time() + 120
    while not (workdir / "history.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    line = [l for l in out.splitlines() if "SIGTERM received" in l][0]
    step = int(line.split("checkpoint saved at step ")[1].split(";")[0])
    checkpoints = Checkpoints(workdir)
    assert checkpoints.latest_step() == step
    checkpoints.close()


def test_float16_trains_and_its_loss_scale_survives_a_resume(tmp_path, tfds_dir, monkeypatch):
    import math

    from jaxcnn.train import state as state_lib

    # A short growth period, so the scale moves within the run (2**15, doubling every 8 steps).
    monkeypatch.setattr(state_lib, "LOSS_SCALE_PERIOD", 8)
    whole, cut = tmp_path / "whole16", tmp_path / "cut16"
    outcome = loop.fit(loop.prepare(config_for(tfds_dir, dtype="float16"), whole),
                       log=lambda *a: None)
    first, second = outcome.records
    assert second["train_loss"] < first["train_loss"] < math.log(10)  # it learns in float16
    assert second["test_accuracy"] > 0.8
    assert second["loss_scale"] != state_lib.LOSS_SCALE_INITIAL

    interrupt_after(monkeypatch, 30)  # (counts batches from here: the next run stops at 31)
    stopped = loop.fit(loop.prepare(config_for(tfds_dir, dtype="float16"), cut),
                       log=lambda *a: None)
    assert stopped.stopped_by == "SIGTERM" and stopped.step == 31
    saved = final_tree(cut, tfds_dir, dtype="float16")
    assert saved["step"] == 31 and set(saved["loss_scale"]) == {"scale", "good_steps"}
    assert saved["loss_scale"]["scale"] != state_lib.LOSS_SCALE_INITIAL
    loop.fit(loop.prepare(config_for(tfds_dir, dtype="float16"), cut, resume=True),
             log=lambda *a: None)
    ours, reference = final_tree(cut, tfds_dir, dtype="float16"), final_tree(
        whole, tfds_dir, dtype="float16")
    assert ours["loss_scale"] == reference["loss_scale"]
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def full_disk_shim(tmp_path_factory):
    """tests/full_disk_shim.c built as a shared library (a disk that is full on demand)."""
    import shutil

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        from conftest import skip_or_fail

        skip_or_fail("no C compiler (cc) to build tests/full_disk_shim.c")
    out = tmp_path_factory.mktemp("shim") / "full_disk_shim.so"
    source = pathlib.Path(__file__).parent / "full_disk_shim.c"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(out), str(source), "-ldl"],
                   check=True)
    return out


def committed_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_a_disk_that_fills_up_during_a_save_stops_the_run_and_resume_uses_the_last_complete(
        tmp_path, tfds_dir, full_disk_shim, capsys):
    workdir, trigger = tmp_path / "full", tmp_path / "disk_is_full"
    # Every write under checkpoints/ fails with ENOSPC once `trigger` exists: tensorstore's
    # (the arrays) and Python's (metadata, manifests) alike, as on a real full disk.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "LD_PRELOAD": str(full_disk_shim),
           "JAXCNN_FULL_DIR": str(workdir / "checkpoints"), "JAXCNN_FULL_TRIGGER": str(trigger)}
    cmd = [str(pathlib.Path(sys.executable).parent / "jaxcnn"), "train", "--epochs", "50",
           "--workdir", str(workdir), "--data-dir", tfds_dir,
           "--config.checkpoint_every_steps=10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "10").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    trigger.touch()  # the disk fills up while the run trains and saves every 10 steps
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    message = err[err.index("jaxcnn: error: "):].strip()  # (after tqdm's progress bar)
    assert message.startswith("jaxcnn: error: the disk is full: writing "), err
    assert "No space left on device" in message and "mounted at /" in message
    last = committed_steps(workdir)[-1]
    assert f"the last complete checkpoint is step {last}." in message
    assert f"then continue with: jaxcnn train --resume --workdir {workdir}" in message
    # No half-written step is left behind for a resume to trip over.
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]

    trigger.unlink()  # space freed: the resumed run starts from the last complete checkpoint
    epochs = last // STEPS_PER_EPOCH + 1
    capsys.readouterr()
    assert main(["train", "--resume", "--workdir", str(workdir), "--epochs", str(epochs)]) == 0
    printed = capsys.readouterr().out
    assert f"resumed {workdir} at step {last} " in printed, printed
    assert committed_steps(workdir)[-1] == epochs * STEPS_PER_EPOCH


def test_predict_applies_the_runs_own_preprocessing(tmp_path, tfds_dir):
    import jaxcnn
    from PIL import Image

    from jaxcnn.train.inference import predict_files
    from jaxcnn.train.parallel import DataParallel

    workdir = tmp_path / "normalised"
    config = config_for(tfds_dir, epochs=1, preprocess="per_channel")
    loop.fit(loop.prepare(config, workdir), log=lambda *a: None)
    images, _ = data.load_split("digits", "test", tfds_dir)
    paths = []
    for i in range(3):  # 28x28 grey PNGs: lossless copies of the first test images
        paths.append(tmp_path / f"test{i}.png")
        Image.fromarray(images[i, :, :, 0]).save(paths[-1])
    predicted = predict_files(workdir, paths, top=10)

    # The evaluation pipeline of the same run on the same images.
    model, variables, spec = jaxcnn.load(workdir)
    pipeline = loop.make_pipeline(config, DataParallel("jit", devices=jax.devices()[:1]))
    batch = next(iter(pipeline.eval_batches("test")))
    assert abs(float(np.mean(batch["image"]))) < 0.5  # normalised, not in [0, 1]
    probs = np.asarray(jax.nn.softmax(model.apply(variables, batch["image"][:3], train=False)))
    for result, expected in zip(predicted, probs):
        got = np.zeros(10)
        for name, p in result["top"]:
            got[spec.class_names.index(name)] = p
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # (What predict did before: pixels / 255 only. The run's statistics make a difference.)
    naive = np.asarray(jax.nn.softmax(model.apply(variables, images[:3] / 255.0, train=False)))
    assert np.abs(naive - probs).max() > 1e-2


def test_a_full_disk_while_writing_the_history_keeps_the_old_file_and_names_the_fix(
        tmp_path, monkeypatch):
    import errno

    from jaxcnn.errors import DiskFullError
    from jaxcnn.train import history

    history.write_history(tmp_path, [{"epoch": 1}])
    before = (tmp_path / "history.json").read_bytes()
    real_write = pathlib.Path.write_text

    def fill_up(path, text, *args, **kwargs):  # half the text lands, then ENOSPC
        real_write(path, text[:len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", fill_up)
    with pytest.raises(DiskFullError, match=r"the disk is full: writing .*history.json.*keeps its "
                       r"previous content.*jaxcnn train --resume --workdir"):
        history.write_history(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    assert (tmp_path / "history.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]  # no .tmp left
