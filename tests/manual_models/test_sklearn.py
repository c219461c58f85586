"""The scikit-learn estimator: scikit-learn's own checks, its optimum against scikit-learn's
logistic regression, and the places a user puts it (pipeline, cross-validation, grid search).

Weighted losses are proved here too: a weight of k on a row is k copies of it, in the loss,
the gradient and the curvature, for all three implementations.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from analysis.compare import polished
from manual_models import (
    AutogradTwin,
    FunctionTwin,
    HandModel,
    Logistic,
    LogisticLoss,
    Softmax,
    SoftmaxLoss,
)
from manual_models.sklearn import ManualLogisticRegression


# Every check passes; none is marked as expected to fail. (check_array_api_input skips itself
# unless SCIPY_ARRAY_API=1: the estimator takes numpy and pandas, not array-API arrays.)
@parametrize_with_checks([ManualLogisticRegression()])
def test_scikit_learn_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks(
    [ManualLogisticRegression("autograd"), ManualLogisticRegression("function")]
)
def test_scikit_learn_checks_for_the_twins(estimator, check):
    check(estimator)


def standardised(load):
    X, y = load(return_X_y=True)
    return StandardScaler().fit_transform(X), y


# Nesterov at lr 0.5 reaches the optimum of these objectives to rounding in 1000 steps
# (measured: 6e-16 on iris, 1e-15 on wine, relative to the Newton-polished minimiser).
CONVERGED = {"rule": "nesterov", "lr": 0.5, "steps": 1000}


@pytest.mark.parametrize("load", [load_iris, load_wine, load_breast_cancer])
def test_with_weight_decay_it_reaches_scikit_learns_optimum(load):
    """Same objective, C = 1/(λm): the coefficients agree to lbfgs's own stopping point
    (measured 2.0e-7 on iris, 3.6e-7 on wine, relative), and to rounding with the minimiser
    Newton's method polishes from lbfgs's answer. Softmax's bias is free up to a shift shared
    by every class (the loss does not see it, nothing penalises it): compared centred."""
    X, y = standardised(load)
    decay = 1e-2
    ours = ManualLogisticRegression(weight_decay=decay, **CONVERGED).fit(X, y)
    theirs = LogisticRegression(C=1 / (decay * len(X)), tol=1e-12, max_iter=10_000).fit(X, y)
    binary = len(ours.classes_) == 2
    W, b = (torch.tensor(a) for a in (theirs.coef_.T, theirs.intercept_))
    yt = torch.tensor(y, dtype=torch.float64 if binary else torch.int64)
    W, b = polished(torch.tensor(X), yt, len(ours.classes_), decay, W[:, 0] if binary else W,
                    b[0] if binary else b)  # fmt: skip
    exact = W.numpy().reshape(len(W), -1).T

    def centred(b):
        return b if binary else b - b.mean()

    scale = np.abs(exact).max()
    assert np.abs(ours.coef_ - theirs.coef_).max() < 1e-6 * scale
    assert np.abs(ours.coef_ - exact).max() < 1e-12 * scale
    assert np.abs(centred(ours.intercept_) - centred(np.atleast_1d(b.numpy()))).max() < 1e-12
    assert np.array_equal(ours.predict(X), theirs.predict(X))


@pytest.mark.parametrize("impl", ["autograd", "function"])
def test_the_implementations_fit_the_same_model(impl):
    """The same seeded start and objective: manual and autograd coefficients agree to float64
    rounding, binary and multiclass, weighted or not."""
    X, y = standardised(load_wine)
    s = np.random.default_rng(0).integers(1, 4, len(y)).astype(float)
    for labels in (y, y == 0):
        manual = ManualLogisticRegression(steps=200, weight_decay=1e-3).fit(X, labels, s)
        twin = ManualLogisticRegression(impl, steps=200, weight_decay=1e-3).fit(X, labels, s)
        gap = np.abs(manual.coef_ - twin.coef_).max() / np.abs(manual.coef_).max()
        assert gap < 1e-12


def test_labels_of_any_type_and_the_fitted_state_in_numpy():
    X, y = standardised(load_iris)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    model = ManualLogisticRegression(steps=200).fit(frame, names)
    assert list(model.classes_) == ["setosa", "versicolor", "virginica"]
    assert list(model.feature_names_in_) == list(frame.columns)
    assert model.coef_.shape == (3, 4) and model.intercept_.shape == (3,)
    assert all(isinstance(a, np.ndarray) for a in (model.coef_, model.intercept_))
    assert (model.predict(frame) == names).mean() > 0.9
    proba = model.predict_proba(frame)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-14)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(frame)), proba, rtol=1e-13)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(frame), proba)
    binary = ManualLogisticRegression(steps=200).fit(X, np.where(y == 0, "yes", "no"))
    assert binary.coef_.shape == (1, 4) and binary.decision_function(X).shape == (150,)
    assert list(binary.classes_) == ["no", "yes"]


def test_predicting_is_the_models_own_forward():
    """predict_proba's second column is the fitted model's σ(Xw + b); its rows, softmax."""
    X, y = standardised(load_wine)
    for labels, kind in ((y == 0, Logistic(13, dtype=torch.float64)),
                         (y, Softmax(13, 3, dtype=torch.float64))):  # fmt: skip
        fitted = ManualLogisticRegression(steps=100).fit(X, labels)
        model = HandModel(kind)
        W = fitted.coef_[0] if kind.n_classes == 2 else fitted.coef_.T
        b = fitted.intercept_[0] if kind.n_classes == 2 else fitted.intercept_
        model.set_parameters(torch.tensor(W), torch.tensor(b))
        forward = model.forward(torch.tensor(X)).numpy()
        proba = fitted.predict_proba(X)
        np.testing.assert_allclose(proba[:, 1] if kind.n_classes == 2 else proba, forward,
                                   rtol=1e-13, atol=1e-15)  # fmt: skip


def test_in_a_pipeline_cross_validation_and_grid_search():
    X, y = load_breast_cancer(return_X_y=True)  # unscaled: the pipeline scales it
    pipe = make_pipeline(StandardScaler(), ManualLogisticRegression(steps=300))
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9
    grid = {"manuallogisticregression__weight_decay": [0.0, 1e-2],
            "manuallogisticregression__impl": ["manual", "autograd"]}  # fmt: skip
    search = GridSearchCV(pipe, grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 4 and search.best_score_ > 0.9
    # The two implementations fit the same models: the same score in every fold.
    results = pd.DataFrame(search.cv_results_)
    by_impl = results.pivot(index="param_manuallogisticregression__weight_decay",
                            columns="param_manuallogisticregression__impl",
                            values="mean_test_score")  # fmt: skip
    np.testing.assert_array_equal(by_impl["manual"], by_impl["autograd"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"impl": "numpy"}, "unknown impl 'numpy'; choose one of manual, autograd, function"),
        ({"rule": "lbfgs"}, "unknown optimizer 'lbfgs'; choose one of sgd, momentum"),
        ({"dtype": "float16"}, "unknown dtype 'float16'; choose one of float32, float64"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"weight_decay": -1.0}, "optimizer weight_decay out of range"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_parameters_are_named_when_fit_runs(params, message):
    X, y = standardised(load_iris)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ManualLogisticRegression(**params).fit(X, y)


# --- weighted losses, in the models ---------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 4])
def test_a_weight_of_k_is_k_copies_of_the_row(n_classes):
    """Loss, gradient, a training step and the Hessian-vector product with integer weights
    equal the same on the rows repeated, in every implementation (float64 rounding)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(9, 3, dtype=torch.float64, generator=gen)
    s = torch.tensor([1, 0, 2, 3, 1, 1, 2, 4, 1], dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(9), s.long())
    y = torch.randint(0, n_classes, (9,), generator=gen)
    if n_classes == 2:
        kind, Loss, y = Logistic(3, dtype=torch.float64), LogisticLoss, y.double()
    else:
        kind, Loss = Softmax(3, n_classes, dtype=torch.float64), SoftmaxLoss
    for make in (HandModel, AutogradTwin, lambda k: FunctionTwin(k, Loss)):
        weighted, repeated = make(kind.weighted(s)), make(kind)
        for _ in range(3):
            a, b = weighted.evaluate(X, y), repeated.evaluate(X[rows], y[rows])
            torch.testing.assert_close(a.loss, b.loss, rtol=1e-14, atol=0)
            for name in ("dw", "db"):
                torch.testing.assert_close(a.grads[name], b.grads[name], rtol=0, atol=1e-15)
            weighted.train_step(X, y)
            repeated.train_step(X[rows], y[rows])
    w, b = kind.initial_parameters(1)
    v = (torch.randn(w.shape, dtype=w.dtype, generator=gen), torch.ones_like(b))
    Hv = kind.weighted(s).hessian_product(X, y, w, b, 0.1)(v)
    expected = kind.hessian_product(X[rows], y[rows], w, b, 0.1)(v)
    for got, want in zip(Hv, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)


def test_weights_are_checked():
    kind = Logistic(2, dtype=torch.float64)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [[1.0]]):
        with pytest.raises(ValueError, match="sample_weight must be"):
            kind.weighted(bad)

    class Unweighing(Logistic):
        weighs_samples = False

    with pytest.raises(NotImplementedError, match="Unweighing does not weigh its samples"):
        Unweighing(2).weighted([1.0, 2.0])
    model = HandModel(kind.weighted([1.0, 2.0]))
    with pytest.raises(ValueError, match="this kind weighs 2 samples; X has 3 rows"):
        model.loss(torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
