from __future__ import annotations

import pytest
import torch

from analysis import TrajectoryGap, trajectory_gap
from experiments import History


def history(steps=3, n=2):
    f64 = {"dtype": torch.float64}
    metrics = {"train/loss": torch.ones(steps + 1, **f64), "param/b": torch.zeros(steps + 1, **f64)}
    return History(
        metrics=metrics,
        params={"w": torch.arange((steps + 1) * n, **f64).view(steps + 1, n),
                "b": metrics["param/b"]},
        grads={"dw": torch.zeros(steps + 1, n, **f64), "db": torch.zeros(steps + 1, **f64)},
        kept=torch.arange(steps + 1),
    )  # fmt: skip


def test_gap_is_the_largest_difference_over_all_steps():
    a, b = history(), history()
    b.w[2, 1] += 3e-6
    b.loss[0] -= 1e-7
    gap = trajectory_gap(a, b)
    near = {"rel": 1e-9, "abs": 0}  # 1 + 3e-6 and 1 − 1e-7 round in float64
    expected = {"w": pytest.approx(3e-6, **near), "b": 0.0}
    assert gap == TrajectoryGap(expected, pytest.approx(1e-7, **near), 3)
    assert gap.max_delta_theta == gap.max_delta_w
    assert gap.agrees(torch.float32) and not gap.agrees(torch.float64)


def test_histories_of_different_length_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        trajectory_gap(history(steps=3), history(steps=4))
