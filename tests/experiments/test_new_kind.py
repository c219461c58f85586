"""A kind of model the repo has never seen, added with public names only: probit regression
(``examples/probit.py``, a user's file outside the packages).

This file is what docs/design.md's "How to add a model" asks of an implementer: a
:class:`manual_models.Kind` with its gradient derived by hand, and nothing else. The loop, K
learning rates in one pass and the per-step gradient check against its autograd twin then take
it as they take the built-in kinds; a wrong derivation is caught by that check.
"""

from __future__ import annotations

import pytest
import torch

from examples.probit import Probit
from experiments import LrBatch, fit
from manual_models import AutogradTwin, Evaluation, HandModel, Kind, ModelCheckFailed, check_model
from manual_models.checks import parametrize_with_checks

LRS = [0.01, 0.1, 1.0]


class ProbitMissingOneOverM(Probit):
    """A wrong derivation: ∂J/∂w without its 1/m."""

    def gradients_at(self, X, y, w, b):
        loss, grads, z = super().gradients_at(X, y, w, b)
        return Evaluation(loss, {**grads, "dw": grads["dw"] * X.shape[0]}, z)


# What a user writes to check a kind of their own: three lines.
@parametrize_with_checks([Probit])
def test_probit_passes_check_model(check):
    check()


def test_check_model_finds_the_missing_one_over_m():
    with pytest.raises(ModelCheckFailed, match=r"FAIL gradient +cpu +\d") as raised:
        check_model(ProbitMissingOneOverM, devices=["cpu"])
    assert "ok   K in one pass" in str(raised.value)  # a wrong gradient is still per column


@pytest.fixture
def data(breast_cancer):
    X, y = (t.double() for t in breast_cancer)
    return X[:400], y[:400], X[400:], y[400:]


def worst_check(history) -> float:
    err = history.metrics["check/grad_err_vs_terms"]
    return float(err[~err.isnan()].max())


def test_a_new_kind_trains_batches_and_passes_the_gradient_check(data):
    X, y, X_val, y_val = data
    kind = Probit(30, dtype=torch.float64)

    # fit, with the hand gradient checked against autograd's at every step
    (manual,) = fit(
        HandModel(kind, 0.1, seed=3), X, y, 200, X_val=X_val, y_val=y_val,
        reference=AutogradTwin(kind, 0.1, seed=3),
    ).runs()  # fmt: skip
    assert manual.diverged_at is None and manual.loss[-1] < 0.5 * manual.loss[0]
    assert worst_check(manual) < 10 * torch.finfo(torch.float64).eps

    # the same trajectory as autograd's twin trained by the post's loop
    (twin,) = fit(AutogradTwin(kind, 0.1, seed=3), X, y, 200).runs()
    assert float((manual.w - twin.w).norm() / twin.w.norm()) < 1e-12

    # K learning rates in one pass: each column is the run its rate makes alone
    together = fit(
        LrBatch(HandModel(kind, seed=3), LRS), X, y, 200,
        reference=LrBatch(AutogradTwin(kind, seed=3), LRS), check_every=5,
    ).runs()  # fmt: skip
    for lr, column in zip(LRS, together, strict=True):
        (alone,) = fit(HandModel(kind, lr, seed=3), X, y, 200).runs()
        assert float((column.w - alone.w).norm() / alone.w.norm()) < 1e-12
        assert worst_check(column) < 10 * torch.finfo(torch.float64).eps


def test_a_wrong_derivation_of_the_new_kind_is_caught(data):
    X, y, *_ = data
    kind, wrong = Probit(30, dtype=torch.float64), ProbitMissingOneOverM(30, dtype=torch.float64)
    (run,) = fit(HandModel(wrong, 0.01), X, y, 5, reference=AutogradTwin(kind, 0.01)).runs()
    assert worst_check(run) > 1.0


def test_a_kind_must_write_every_hook():
    class Half(Kind):
        def labels(self, y, n_samples, *, check=True):
            return y

    with pytest.raises(TypeError, match="abstract"):
        Half(3)
