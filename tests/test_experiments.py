"""Every scripted experiment end to end in its --quick mode, with the directions of the claims
that hold even at a tiny budget; the runner's and the CLI's errors for bad names."""
from __future__ import annotations

import json
import math

import pytest

from jaxcnn.cli import main as jaxcnn_main
from jaxcnn.errors import ConfigError, UnknownNameError

from experiments import run as experiments

QUICK_CHECKS = {
    # The directions the issue names as robust at small budgets.
    "init": ["constant init does not learn"],
    "augmentation": ["both arms trained"],
    "transfer": ["fine-tuning beats scratch"],
}


@pytest.fixture(scope="module")
def data(shared_data, tfds_dir):
    return {"data_root": shared_data, "data_dir": tfds_dir}


def silent(*args, **kwargs):
    pass


@pytest.mark.parametrize("name", [n for n in experiments.NAMES if n != "augmentation"])
def test_quick_mode_runs_end_to_end(name, data, tmp_path):
    results = experiments.run_experiment(name, quick=True, workdir=tmp_path / name, log=silent,
                                         **data)
    exp = experiments.get_experiment(name)
    written = json.loads((tmp_path / name / "results.json").read_text())
    assert written["summary"] == results["summary"] and written["quick"] is True
    assert (tmp_path / name / "results.md").read_text().startswith(f"# {exp.title}")
    assert list(results["arms"]) == list(exp.arms)
    for arm, result in results["arms"].items():
        records = result["records"]
        assert records and all(math.isfinite(r["train_loss"]) for r in records), arm
        assert result["wall_seconds"] > 0
    if exp.figure:
        png = tmp_path / name / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 100_000
    for check in QUICK_CHECKS.get(name, []):
        assert results["summary"]["checks"][check], (check, results["summary"]["headline"])
    if name == "mnist_case_study":  # a second run reuses the finished arm instead of training
        messages = []
        again = experiments.run_experiment(name, quick=True, workdir=tmp_path / name,
                                           log=messages.append, **data)
        assert not any("train loss" in m for m in messages)
        assert again["arms"] == results["arms"]


def test_augmentation_quick_through_the_cli(data, tmp_path, capsys):
    workdir = tmp_path / "augmentation"
    code = jaxcnn_main(["experiment", "augmentation", "--quick", "--workdir", str(workdir),
                        "--data-root", str(data["data_root"]), "--data-dir", data["data_dir"]])
    assert code == 0, capsys.readouterr().err
    results = json.loads((workdir / "results.json").read_text())
    assert results["summary"]["checks"]["both arms trained"]
    augmented = json.loads((workdir / "rotate_translate" / "config.json").read_text())
    assert augmented["augment"] == "rotate:10,translate:2"
    assert "augmentation (rotate:10,translate:2) changes test accuracy" in capsys.readouterr().out


def test_unknown_experiment_names_the_known_ones(capsys):
    with pytest.raises(UnknownNameError, match="unknown experiment 'mnist'.*mnist_case_study"):
        experiments.get_experiment("mnist")
    assert experiments.main(["no_such"]) == 2
    assert "unknown experiment 'no_such'; known experiments: augmentation" in capsys.readouterr().err
    assert jaxcnn_main(["experiment", "no_such"]) == 2
    assert "unknown experiment 'no_such'" in capsys.readouterr().err


def test_an_arm_can_only_start_from_an_earlier_arm(tmp_path):
    exp = experiments.get_experiment("transfer")
    exp.arms = {"scratch": exp.arms["scratch"], "pretrain": exp.arms["pretrain"],
                "fine_tuning": exp.arms["fine_tuning"]}
    exp.arms["scratch"] = {**exp.arms["scratch"], "init_from": "@pretrain"}
    with pytest.raises(ConfigError, match="must name an earlier arm"):
        experiments.arm_config(exp, "scratch", False, tmp_path)
    config = experiments.arm_config(exp, "fine_tuning", True, tmp_path)
    assert config.init_from == str(tmp_path / "pretrain") and config.epochs == 1


def test_a_workdir_of_other_settings_is_refused(data, tmp_path):
    from jaxcnn.train import rundir

    exp = experiments.get_experiment("optimizers")
    config = experiments.arm_config(exp, "adam", True, tmp_path, **data)
    stored = experiments.apply(config.copy_and_resolve_references(), {"lr": 0.5})
    rundir.write_config(tmp_path / "adam", stored)
    with pytest.raises(ConfigError, match=r"other settings \(lr\); pass --restart"):
        experiments.train_arm("adam", config, tmp_path / "adam", log=silent)


def test_training_and_evaluation_slices_of_a_split(data, tmp_path):
    from jaxcnn import data as jdata
    from jaxcnn.configs.default import get_config
    from jaxcnn.errors import DataError
    from jaxcnn.train import loop

    manual = str(data["data_root"] / "mnist")
    spec = jdata.dataset_spec("mnist", data["data_dir"], manual)
    assert spec.split_size("train[:4000]") == 4000 and spec.split_size("test[:50%]") == 5000
    assert spec.split_size("train[:100]+test[:28]") == 128
    with pytest.raises(DataError, match="no split 'train\\[:70000\\]'.*'train\\[:4000\\]'"):
        spec.split_size("train[:70000]")
    images, labels = jdata.load_split("mnist", "train[:300]", data["data_dir"], manual)
    assert images.shape == (300, 28, 28, 1) and labels.shape == (300,)
    config = get_config()
    config.update(dataset="mnist", data_dir=data["data_dir"], manual_dir=manual, epochs=1,
                  batch_size=50, train_split="train[:300]", eval_split="test[:200]")
    outcome = loop.fit(loop.prepare(config, str(tmp_path / "run")), log=silent)
    assert outcome.step == 6  # 300 examples in batches of 50
    measured = loop.evaluate_run(tmp_path / "run", "test[:200]")
    assert measured["num_examples"] == 200
    assert measured["test[:200]_accuracy"] == outcome.records[0]["test_accuracy"]
    config.eval_split = "validation"
    with pytest.raises(DataError, match="no split 'validation'"):
        loop.prepare(config, str(tmp_path / "other"))
