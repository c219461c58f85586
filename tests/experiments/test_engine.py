"""Trajectories: 1,000 full-batch GD steps give the same path whoever computes the gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manual_models.logistic
from analysis import TOLERANCES, trajectory_gap
from experiments import datasets, fit
from manual_models import make_model

STEPS, LR = 1000, 0.1


def run(impl, X, y, steps=STEPS):
    model = make_model(impl, X.shape[1], LR, dtype=X.dtype, device=X.device, seed=0)
    return fit(model, X, y, steps)


@pytest.mark.parametrize("impl", ["manual", "function"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_trajectory_matches_autograd(impl, dtype, breast_cancer):
    X, y = (t.to(dtype) for t in breast_cancer)
    got, ref = run(impl, X, y), run("autograd", X, y)
    gap = trajectory_gap(got, ref)
    assert gap.max_delta_w <= TOLERANCES[dtype], gap
    assert gap.agrees(dtype), gap
    # The path is not trivial: the loss fell by an order of magnitude and w moved far.
    assert ref.loss[-1] < ref.loss[0] / 10
    assert (ref.w[-1] - ref.w[0]).norm() > 1


def test_history_layout(breast_cancer):
    X, y = breast_cancer
    history = run("manual", X, y, steps=5)
    assert history.steps == 5
    assert history.w.shape == (6, 30) and history.dw.shape == (5, 30)
    assert history.b.shape == (6,) and history.db.shape == (5,) and history.loss.shape == (5,)
    assert history.w.device.type == "cpu"
    # Row t holds the parameters before step t: w[t+1] = w[t] − lr·dw[t].
    torch.testing.assert_close(history.w[1:], history.w[:-1] - LR * history.dw, rtol=0, atol=1e-15)


def test_trajectory_check_catches_a_0_1_percent_gradient_bug(breast_cancer, monkeypatch):
    X, y = breast_cancer
    ref = run("autograd", X, y, steps=200)
    correct = manual_models.logistic.bce_gradients

    def scaled(*args):
        return {k: 1.001 * v for k, v in correct(*args).items()}

    monkeypatch.setattr(manual_models.logistic, "bce_gradients", scaled)
    assert not trajectory_gap(run("manual", X, y, steps=200), ref).agrees(torch.float64)


def test_reruns_are_bit_identical(breast_cancer):
    X, y = breast_cancer
    a, b = run("manual", X, y, steps=50), run("manual", X, y, steps=50)
    assert torch.equal(a.w, b.w) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("steps", [0, -1, 2.0])
def test_bad_steps(steps, breast_cancer):
    X, y = breast_cancer
    with pytest.raises(ValueError, match="steps"):
        fit(make_model("manual", 30, dtype=torch.float64, device=X.device), X, y, steps)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breast_cancer", "iris", "wine", "digits", "moons"])
@pytest.mark.parametrize("lr", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_trajectories_agree_on_every_dataset_and_lr(name, lr, dtype, device):
    X, y = datasets.load(name)
    X = torch.tensor((X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1), dtype=dtype)
    y = torch.tensor(y, dtype=dtype)
    X, y = X.to(device), y.to(device)
    histories = {
        impl: fit(make_model(impl, X.shape[1], lr, dtype=dtype, device=device), X, y, 2000)
        for impl in ("manual", "function", "autograd")
    }
    for impl in ("manual", "function"):
        gap = trajectory_gap(histories[impl], histories["autograd"])
        assert gap.agrees(dtype), (impl, gap)
