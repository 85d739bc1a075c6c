"""benchmarks/time_to_accuracy.py's jaxcnn worker on real MNIST: an evaluation scored in the
background, while the next steps run, reports the same accuracies at the same epochs as one
scored before the next step, and the run stops at the first evaluation at the target; what
is evaluated is the moving average of the parameters unless ``--average 0``."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "time_to_accuracy.py"


def worker_events(data_dir, evaluation: str, target: float, average: str = "0.998"
                  ) -> list[dict]:
    # 250 steps of batch 24 (0.1 epoch), an evaluation every 62 or 63 steps
    cmd = [sys.executable, str(SCRIPT), "--worker", "--seed", "0", "--eval", evaluation,
           "--epochs", "0.1", "--evals-per-epoch", "40", "--target", str(target),
           "--average", average, "--data-dir", str(data_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"JAXCNN_MALLOC_TUNING": "0", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def trail(events):
    return [(e["epoch"], e["accuracy"]) for e in events if e["event"] == "eval"]


def test_background_evaluation_scores_the_same_points_and_stops_at_the_first_one_on_target(
        shared_data):
    inline = worker_events(shared_data / "mnist", "inline", target=1.01)  # never reached
    points = trail(inline)
    assert [round(epoch * 2500) for epoch, _ in points] == [62, 125, 188, 250]
    assert inline[-1]["event"] == "not_reached"
    accuracies = [accuracy for _, accuracy in points]
    assert accuracies == sorted(accuracies) and 0.5 < accuracies[-1] < 1.0, points

    # a target first met at the second or a later point, so the background run must have
    # kept training past an evaluation that was still running or below the target
    later = max(accuracy for _, accuracy in points[1:])
    first_at_target = next(i for i, (_, accuracy) in enumerate(points) if accuracy >= later)
    background = worker_events(shared_data / "mnist", "background", target=later)
    assert trail(background) == points[:first_at_target + 1]
    reached = background[-1]
    assert reached["event"] == "reached"
    assert (reached["epoch"], reached["accuracy"]) == points[first_at_target]


def test_the_evaluated_average_lags_the_parameters_and_average_0_evaluates_them(shared_data):
    averaged = trail(worker_events(shared_data / "mnist", "inline", target=1.01))
    raw = trail(worker_events(shared_data / "mnist", "inline", target=1.01, average="0"))
    assert [epoch for epoch, _ in averaged] == [epoch for epoch, _ in raw]
    # after 62 steps at decay 0.998 the average still holds 0.998**62 = 88% of the initial
    # weights: near chance, where the parameters themselves already score above 80%
    assert averaged[0][1] < 0.3 and raw[0][1] > 0.8, (averaged, raw)
    assert all(a != r for (_, a), (_, r) in zip(averaged, raw))


def test_a_decay_outside_0_to_1_is_refused(tmp_path):  # before the data folder is read
    done = subprocess.run([sys.executable, str(SCRIPT), "--no-torch", "--average", "1",
                           "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--average 1.0: the decay must be in [0, 1)" in done.stderr


def test_a_data_folder_without_the_mnist_files_is_refused_by_name(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    done = subprocess.run([sys.executable, str(SCRIPT), "--no-torch", "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert (f"--data-dir {tmp_path} lacks train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz") in done.stderr
    assert done.stdout == ""
