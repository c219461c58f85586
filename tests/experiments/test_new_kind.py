"""A kind of model the repo has never seen, added with public names only: probit regression.

This file is what docs/design.md's "How to add a model" asks of an implementer: a
:class:`manual_models.Kind` with its gradient derived by hand, and nothing else. The loop, K
learning rates in one pass and the per-step gradient check against its autograd twin then take
it as they take the built-in kinds; a wrong derivation is caught by that check.

Probit regression: P(y = 1 | x) = Φ(z), z = x·w + b, Φ the standard normal CDF. With s = 2y − 1,

    J       = −(1/m) Σᵢ log Φ(sᵢ zᵢ)                  (Φ(−z) = 1 − Φ(z))
    ∂Jᵢ/∂zᵢ = −sᵢ φ(zᵢ) / Φ(sᵢ zᵢ)                    (Φ' = φ, and φ is even)
    ∂J/∂w   = Xᵀ r / m,  ∂J/∂b = mean(r),   rᵢ = −sᵢ exp(log φ(zᵢ) − log Φ(sᵢ zᵢ))

with log Φ from ``torch.special.log_ndtr``, so no ratio of two tiny numbers is formed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from experiments import LrBatch, fit
from manual_models import AutogradTwin, Evaluation, HandModel, Kind, ModelCheckFailed, check_model
from manual_models.checks import parametrize_with_checks
from manual_models.initialisation import init_linear
from manual_models.validation import check_binary_labels

LRS = [0.01, 0.1, 1.0]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def signs(y, z):
    """s = 2y − 1, shaped to broadcast against z (one column, or K)."""
    return 2 * (y if z.ndim == 1 else y.unsqueeze(1)) - 1


def residual(z, y):
    """r = ∂Jᵢ/∂zᵢ · m = −s φ(z) / Φ(s z), through logs."""
    s = signs(y, z)
    return -s * torch.exp(-0.5 * z * z - LOG_SQRT_2PI - torch.special.log_ndtr(s * z))


def probit_loss(z, y):
    return -torch.special.log_ndtr(signs(y, z) * z).mean(0)


class ProbitLoss(nn.Module):
    """The criterion on nn.Linear's outputs, for the autograd twin's post-style loop."""

    def forward(self, z, y):
        return probit_loss(z, y)


class Probit(Kind):
    """Probit regression, derived by hand above; every method the Kind contract asks for."""

    def labels(self, y, n_samples, *, check=True):
        return check_binary_labels(y, n_samples, self.device, self.dtype, values=check)

    def initial_parameters(self, seed):
        weight, bias = init_linear(self.n_features, 1, seed, self.device, self.dtype)
        return weight[0], bias[0]

    def link(self, z):
        return torch.special.ndtr(z)

    def logits_at(self, X, w, b):
        return X @ w + b

    def loss_at(self, X, y, w, b):
        return probit_loss(self.logits_at(X, w, b), y)

    def gradients_at(self, X, y, w, b):
        z = self.logits_at(X, w, b)
        r = residual(z, y)
        return Evaluation(probit_loss(z, y), {"dw": X.T @ r / X.shape[0], "db": r.mean(0)}, z)

    def accuracy(self, z, y):
        return ((z > 0) == (signs(y, z) > 0)).to(z.dtype).mean(0)

    def summands_at(self, X, y, z):
        r = residual(z, y).abs()
        return {"dw": X.abs().T @ r / X.shape[0], "db": r.mean(0)}

    def reference_loss_at(self, X, y, w, b):
        z = F.linear(X, w.reshape(self.n_features, -1).T, b.reshape(-1)).view(-1, *b.shape)
        return probit_loss(z, y), z

    def criterion(self):
        return ProbitLoss()

    def from_linear(self, weight, bias):
        return weight[0], bias[0]


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
