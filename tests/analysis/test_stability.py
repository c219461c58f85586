"""The stability section's pieces on series whose answers are known: each class of run, the
late linear rate, the predicted one from a spectrum, the zones."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import stability
from analysis.stability import Behaviour, Curvature, behaviour, late_rate, zone

T = np.arange(1000)


def test_a_loss_that_never_rises_is_monotone_and_rounding_is_not_a_rise():
    loss = 0.3 + np.exp(-T / 50)  # flat at the end: there rounding is all that moves
    assert behaviour(loss, "float64") == Behaviour("monotone")
    wobbly = loss * (1 + 3e-7 * np.random.default_rng(0).standard_normal(len(T)))
    assert behaviour(wobbly, "float32").kind == "monotone"  # float32's noise
    assert behaviour(wobbly, "float64").kind != "monotone"


def test_swings_that_die_down_are_an_oscillating_convergence():
    loss = 0.5 + 0.3 * (-0.99) ** T * np.exp(-T / 300)
    found = behaviour(loss, "float64")
    assert found.kind == "oscillating" and found.rises > 100 and found.last_rise > 900


@pytest.mark.parametrize("period", [2, 3, 5])
def test_a_loss_that_repeats_is_a_cycle_with_its_period_and_first_step(period):
    start = 400
    pattern = 0.5 + 0.1 * np.sin(2 * np.pi * np.arange(period) / period + 0.3)
    loss = np.concatenate([1 + 1 / (1 + T[:start]), np.resize(pattern, len(T) - start)])
    found = behaviour(loss, "float64")
    assert (found.kind, found.period, found.cycle_from) == ("cycle", period, start)
    assert found.last_rise > len(T) - period - 1


def test_a_chaotic_loss_is_neither():
    x = np.empty(len(T))
    x[0] = 0.3
    for t in range(1, len(T)):
        x[t] = 3.99 * x[t - 1] * (1 - x[t - 1])  # the logistic map, chaotic at r = 3.99
    assert behaviour(x, "float64").kind == "neither"


def test_the_late_rate_is_the_geometric_factor_above_the_rounding_floor():
    steps = np.arange(0, 1001, 10)
    distances = 2.0 * 0.97**steps
    assert late_rate(steps, distances, 0.0) == pytest.approx(0.97, rel=1e-12)
    floored = np.maximum(distances, 1e-9)  # rounding holds it at 1e-9 from t ≈ 680
    assert late_rate(steps, floored, 1e-8) == pytest.approx(0.97, rel=1e-10)
    assert late_rate(steps, floored, 1e-2) == pytest.approx(0.97, rel=1e-10)  # t < 170 only
    assert np.isnan(late_rate(steps, floored, 3.0))  # never above the floor


def test_the_predicted_rate_skips_directions_the_loss_does_not_see():
    basis = np.eye(3)[:, 1:]
    curvature = Curvature(np.zeros(3), np.array([0.0, 0.5, 2.0]), basis)
    assert curvature.rate(0.6) == pytest.approx(max(abs(1 - 0.3), abs(1 - 1.2)))
    assert curvature.rate(1.1) == pytest.approx(1.2)  # past 2/λ*: above 1, θ* repels
    assert curvature.distance(np.array([[5.0, 3.0, 4.0]])) == pytest.approx([5.0])


def test_zones_of_lr_times_lambda_star():
    assert [zone(v) for v in (0.2, 0.999, 1.0, 1.99, 2.0, 18.0)] == [
        "below 1", "below 1", "1 to 2", "1 to 2", "above 2", "above 2"
    ]  # fmt: skip
    assert stability.ZONES == ("below 1", "1 to 2", "above 2")
