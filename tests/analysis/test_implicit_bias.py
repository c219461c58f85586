"""The implicit-bias section's pieces: the hard-margin SVM by least distance programming,
held to its optimality conditions and to a general solver."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.implicit_bias import hard_margin_svm
from experiments.config import DatasetConfig
from experiments.data import load_split


def rows(X, y):
    return np.where(y > 0.5, 1.0, -1.0)[:, None] * np.hstack([X, np.ones((len(X), 1))])


@pytest.mark.parametrize(("name", "norm", "support"), [("breast_cancer", 24.875, 24),
                                                       ("wine", 1.9976, 14)])  # fmt: skip
def test_the_svm_meets_its_optimality_conditions_on_the_separable_sets(name, norm, support):
    """KKT for min ½‖w‖² s.t. Gw ≥ 1: feasible, w = Gᵀα with α ≥ 0, α zero off the margin.
    Convex, so these make ŵ the optimum."""
    split = load_split(DatasetConfig(name=name), 0, 0.25)
    svm = hard_margin_svm(split.X_train, split.y_train)
    G = rows(split.X_train, split.y_train)
    margins = G @ svm.w
    assert margins.min() >= 1 - 1e-9
    assert (svm.alpha >= 0).all()
    np.testing.assert_allclose(G.T @ svm.alpha, svm.w, rtol=1e-9, atol=1e-9)
    assert np.abs(svm.alpha * (margins - 1)).max() <= 1e-9
    assert svm.norm == pytest.approx(norm, rel=1e-4) and len(svm.support) == support


def test_the_svm_is_a_general_solver_s_on_wine():
    """The same QP by scipy's SLSQP on the primal, from ŵ scaled up (a feasible start)."""
    from scipy.optimize import minimize

    split = load_split(DatasetConfig(name="wine"), 0, 0.25)
    svm = hard_margin_svm(split.X_train, split.y_train)
    G = rows(split.X_train, split.y_train)
    theirs = minimize(
        lambda w: w @ w / 2, 1.5 * svm.w, jac=lambda w: w, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda w: G @ w - 1, "jac": lambda w: G}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )  # fmt: skip
    assert theirs.success
    np.testing.assert_allclose(theirs.x, svm.w, rtol=0, atol=1e-6 * svm.norm)


def test_inseparable_data_is_refused_in_one_line():
    split = load_split(DatasetConfig(name="moons"), 0, 0.25)
    with pytest.raises(ValueError, match="not linearly separable"):
        hard_margin_svm(split.X_train, split.y_train)


def test_separable_runs_head_for_the_svm_and_their_sharpness_obeys_its_bound(curved_sweep):
    """wine is separable, moons is not (and is left out). Along 60 steps at every rate:
    1 − cos(θ_t, ŵ) falls and the margin ratio rises toward 1; λ_max ≤ max‖x̃ᵢ‖²·J at every
    measurement (a theorem: the ratio is at most 1); lr·λ_max ends below 2 for every lr."""
    from analysis import implicit_bias

    sweep, _ = curved_sweep
    held = implicit_bias.table(sweep)
    assert set(held.dataset) == {"wine"} and len(held) == 6
    assert np.allclose(held.svm_norm, 1.99765, rtol=1e-5) and (held.support_vectors == 14).all()
    assert (held.sharpness_over_bound <= 1).all() and (held.sharpness_over_bound > 0.01).all()
    assert held.below_2_from.notna().all()
    paths = implicit_bias.paths(sweep, held)
    assert len(paths) == 3
    for along in paths.values():
        early, late = along.iloc[len(along) // 10], along.iloc[-1]
        assert late.one_minus_cos < early.one_minus_cos
        assert early.margin_ratio < late.margin_ratio <= 1 + 1e-9
    rises = implicit_bias.last_rises(held)
    assert list(rises.lr) == [0.3, 3.0, 30.0]
