"""The `jaxcnn` command: real training runs, resume, eval, and the bad-input messages."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxcnn.cli import main


def snapshot(folder: pathlib.Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tfds_dir):
    """A 2-epoch run, resumed to 3 epochs."""
    workdir = tmp_path_factory.mktemp("runs") / "lenet"
    common = ["--workdir", str(workdir), "--data-dir", tfds_dir, "--config.schedule=constant"]
    assert main(["train", "--epochs", "2", *common]) == 0
    assert len(json.loads((workdir / "history.json").read_text())) == 2
    assert main(["train", "--resume", "--epochs", "3", *common]) == 0
    return workdir


def test_run_directory_holds_config_history_curves_events_checkpoints(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.json", "history.json", "curves.png", "checkpoints"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    config = json.loads((finished_run / "config.json").read_text())
    assert config["model"] == "lenet5" and config["epochs"] == 3 and config["num_classes"] == 10
    steps = sorted(int(p.name) for p in (finished_run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [44, 88, 132]  # 1,438 // 32 = 44 steps an epoch


def test_resume_continues_the_history(finished_run):
    history = json.loads((finished_run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    for record in history:
        assert set(record) >= {"train_loss", "train_accuracy", "test_loss", "test_accuracy",
                               "epoch_seconds"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_eval_reports_the_last_recorded_test_accuracy(finished_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--workdir", str(finished_run)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    last = json.loads((finished_run / "history.json").read_text())[-1]
    assert result["num_examples"] == 359
    assert result["test_accuracy"] == pytest.approx(last["test_accuracy"], abs=1e-9)
    assert result["test_loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    assert 0 < result["top5_accuracy"] <= 1


def test_eval_on_the_train_split(finished_run, capsys):
    capsys.readouterr()
    assert main(["eval", "--workdir", str(finished_run), "--split", "train"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_examples"] == 1438 and result["train_accuracy"] > 0.8


def test_default_training_reaches_97_percent_on_the_held_out_digits(tmp_path, tfds_dir):
    workdir = tmp_path / "default"
    assert main(["train", "--workdir", str(workdir), "--data-dir", tfds_dir]) == 0
    history = json.loads((workdir / "history.json").read_text())
    assert len(history) == 15
    assert history[-1]["test_accuracy"] >= 0.97, history[-1]


BAD_INPUTS = [
    (["--model", "resnet_nope"], "unknown model 'resnet_nope'", "lenet5"),
    (["--dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'", "digits"),
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0", None),
    (["--epochs", "-1"], "epochs must be a positive integer, got -1", None),
    (["--config.no_such_key=1"], "unknown config key 'no_such_key'", "batch_size"),
    (["--config.epochs=three"], "config key 'epochs' takes a int, got 'three'", None),
    (["--batch-size", "5000"], "batch size 5000 is larger than the training split (1438", None),
    (["--config.optimizer=adamw"], "unknown optimizer 'adamw'", "adam"),
]


@pytest.mark.parametrize("args, message, listed", BAD_INPUTS)
def test_bad_input_exits_2_with_one_clear_message_and_writes_nothing(
        args, message, listed, tmp_path, tfds_dir, capsys):
    workdir = tmp_path / "run"
    code = main(["train", "--workdir", str(workdir), "--data-dir", tfds_dir, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    if listed:
        assert listed in err
    assert not workdir.exists()


def test_a_workdir_holding_another_models_run_is_refused_untouched(finished_run, tfds_dir, capsys):
    before = snapshot(finished_run)
    code = main(["train", "--workdir", str(finished_run), "--data-dir", tfds_dir,
                 "--model", "other_model"])
    assert code == 2 and "unknown model" in capsys.readouterr().err
    config = json.loads((finished_run / "config.json").read_text())
    config["model"] = "mnist_cnn"
    stranger = finished_run.parent / "stranger"
    stranger.mkdir()
    (stranger / "config.json").write_text(json.dumps(config))
    code = main(["train", "--workdir", str(stranger), "--data-dir", tfds_dir])
    assert code == 2
    assert "holds a run of model 'mnist_cnn', not 'lenet5'" in capsys.readouterr().err
    assert [p.name for p in stranger.iterdir()] == ["config.json"]
    # Same model without --resume: refused too, nothing overwritten.
    code = main(["train", "--workdir", str(finished_run), "--data-dir", tfds_dir])
    assert code == 2 and "pass --resume" in capsys.readouterr().err
    assert snapshot(finished_run) == before


def test_resume_checks(tmp_path, finished_run, capsys):
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --workdir" in capsys.readouterr().err
    assert main(["train", "--resume", "--workdir", str(tmp_path)]) == 2
    assert "is not a jaxcnn run" in capsys.readouterr().err
    before = snapshot(finished_run)
    assert main(["train", "--resume", "--workdir", str(finished_run), "--config.schedule=cosine"]) == 2
    assert "schedule='constant'" in capsys.readouterr().err
    assert snapshot(finished_run) == before
    assert main(["eval", "--workdir", str(tmp_path)]) == 2


def test_the_installed_command_reports_bad_input_with_exit_code_2(tmp_path):
    script = pathlib.Path(sys.executable).parent / "jaxcnn"
    result = subprocess.run([str(script), "train", "--model", "nope", "--workdir",
                             str(tmp_path / "x")], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "jaxcnn: error: unknown model 'nope'" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_config_file_with_overrides_and_options(tmp_path, tfds_dir):
    workdir = tmp_path / "cfg"
    code = main(["train", "--config", "experiments/configs/lenet5_digits.py",
                 "--config.epochs=1", "--config.lr=0.002", "--batch-size", "128",
                 "--workdir", str(workdir), "--data-dir", tfds_dir])
    assert code == 0
    config = json.loads((workdir / "config.json").read_text())
    assert (config["epochs"], config["lr"], config["batch_size"], config["schedule"]) == \
        (1, 0.002, 128, "constant")
    steps = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["11"]  # 1,438 // 128


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.py")]) == 2
    assert "config file" in capsys.readouterr().err
