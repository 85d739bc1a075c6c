"""benchmarks/throughput.py's warm-up: every participant trains until its time is spent and
its minimum of steps has run, and its repetition length comes from the last steps, not the
slow first ones."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
from throughput import steps_for, warm_up  # noqa: E402


class FakeRun:
    """``run(n)``: n steps whose seconds come from ``per_step`` in turn (the last repeats)."""

    def __init__(self, per_step):
        self.per_step, self.steps = list(per_step), 0

    def __call__(self, n):
        took = 0.0
        for _ in range(n):
            took += self.per_step[min(self.steps, len(self.per_step) - 1)]
            self.steps += 1
        return took


def test_it_runs_until_the_time_is_spent_and_returns_the_last_steps_time():
    # A fresh process: 0.6 s steps that settle at 0.25 s from the seventh step on.
    run = FakeRun([0.6] * 6 + [0.25])
    last = warm_up(run, seconds=4.0)
    # 6 x 0.6 = 3.6 s, then 0.25 s steps two at a time: 4.1 s after 8 steps.
    assert run.steps == 8
    assert last == pytest.approx(0.25)
    # The repetition length follows the settled step, not the first ones: 8 steps for 2 s.
    assert steps_for(last, 2.0) == 8
    assert steps_for(0.6, 2.0) == 3


def test_fast_steps_still_run_the_minimum_and_slow_ones_stop_after_the_time():
    fast = FakeRun([0.001])
    warm_up(fast, seconds=0.0, min_steps=4)
    assert fast.steps == 4
    slow = FakeRun([3.0])  # ResNet-50 on a slow machine: two steps already pass 4 s
    assert warm_up(slow, seconds=4.0, min_steps=2) == pytest.approx(3.0)
    assert slow.steps == 2
