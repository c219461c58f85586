"""Probit regression, a model this repo does not ship: a user's file, outside the packages.

    P(y = 1 | x) = Φ(z),  z = x·w + b,  Φ the standard normal CDF;  with s = 2y − 1,

    J       = −(1/m) Σᵢ log Φ(sᵢ zᵢ)                  (Φ(−z) = 1 − Φ(z))
    ∂Jᵢ/∂zᵢ = −sᵢ φ(zᵢ) / Φ(sᵢ zᵢ)                    (Φ' = φ, and φ is even)
    ∂J/∂w   = Xᵀ r / m,  ∂J/∂b = mean(r),   rᵢ = −sᵢ exp(log φ(zᵢ) − log Φ(sᵢ zᵢ))

with log Φ from ``torch.special.log_ndtr``, so no ratio of two tiny numbers is formed.

A :class:`manual_models.Kind` with every method the contract asks for, and nothing else:
``check_model(Probit)`` checks it, and ``examples/probit.yaml`` sweeps it
(``model: examples.probit:Probit``) beside autograd of its own ``loss_at``, trained by
``torch.optim``. No curvature is derived here, so its runs measure no sharpness.
"""

from __future__ import annotations

import math

import torch

from manual_models import Evaluation, Kind
from manual_models.initialisation import init_linear
from manual_models.validation import check_binary_labels

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

    def summands_at(self, X, y, z, *params):
        r = residual(z, y).abs()
        return {"dw": X.abs().T @ r / X.shape[0], "db": r.mean(0)}
