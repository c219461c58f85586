r"""Logistic regression differentiated by hand: no autograd anywhere in this file.

Notation (d2l's): X is (m, n) with one sample per row — scikit-learn's and ``nn.Linear``'s layout.
The post this repo starts from writes X as (n, m), one sample per *column*, and z = wᵀX + b;
our ``X @ w`` is the same product with X transposed.

    z  = X w + b                                   logits, (m,)
    ŷ  = σ(z) = 1 / (1 + e^{-z})                    probabilities, (m,)
    J  = (1/m) Σᵢ −[yᵢ log ŷᵢ + (1 − yᵢ) log(1 − ŷᵢ)]
       = (1/m) Σᵢ softplus(zᵢ) − yᵢ zᵢ             as log σ(z) = −softplus(−z)
                                                and softplus(z) − softplus(−z) = z

Derivation of the gradient, one line at a time:

    ∂Jᵢ/∂zᵢ = σ(zᵢ) − yᵢ = ŷᵢ − yᵢ                  (d softplus(z)/dz = σ(z))
    ∂J/∂w   = (1/m) Σᵢ (ŷᵢ − yᵢ) xᵢ = Xᵀ(ŷ − y) / m   (∂zᵢ/∂w = xᵢ)
    ∂J/∂b   = (1/m) Σᵢ (ŷᵢ − yᵢ)    = mean(ŷ − y)    (∂zᵢ/∂b = 1)

and gradient descent, θ ← θ − α ∂J/∂θ.

The pure functions below are the math; :class:`LogisticRegression` is the post's class around
them, corrected (its ``init`` is ``__init__``, and its ``forward`` adds ``b``).
"""

from __future__ import annotations

import torch

from manual_models import _checks


def logits(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z = X w + b."""
    return X @ w + b


def bce_from_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """J = mean(softplus(z) − y z) = mean((max(z, 0) − y z) + log1p(e^{−|z|})).

    The exponent is never positive, so J is finite for every finite z: no log(0), no overflow.
    The bracket is exactly 0 for a confident right answer (y = 1, z > 0 or y = 0, z < 0), so the
    small log1p term is not rounded away: each sample's loss is accurate to a few ulp, even at
    1e-16 (``BCEWithLogitsLoss`` computes log(e^{−m} + e^{−z−m}) and loses digits there).
    """
    return ((torch.clamp_min(z, 0) - y * z) + torch.log1p(torch.exp(-z.abs()))).mean()


def bce_gradients(X: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y): the chain rule through ∂J/∂z = (ŷ − y)/m."""
    residual = y_hat - y
    return {"dw": X.T @ residual / X.shape[0], "db": residual.mean()}


class LogisticRegression(_checks.CheckedModel):
    """The post's logistic regression, differentiated by hand.

    ``forward`` → ``backward`` → ``optimize`` is the manual version of autograd's
    ``zero_grad → forward → loss → backward → step``. Nothing here requires grad, so it runs
    unchanged under ``torch.inference_mode()``.

    Parameters ``w`` (n_features,) and ``b`` (0-d) start from nn.Linear's default
    distribution drawn with ``seed``, so a twin built with the same seed starts identically.
    """

    def __init__(
        self,
        n_features: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        self._check_args(n_features, lr, device, dtype)
        self.w, self.b = _checks.init_parameters(self.n_features, seed, self.device, self.dtype)
        self.grads: dict[str, torch.Tensor] = {}

    # --- the post's three methods -------------------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """ŷ = σ(X w + b), shape (n_samples,)."""
        return torch.sigmoid(logits(self._X(X), self.w, self.b))

    def backward(
        self, X: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y); kept in ``self.grads`` for :meth:`optimize`."""
        X = self._X(X)
        y = self._y(y, X, check)
        if not isinstance(y_hat, torch.Tensor) or y_hat.shape != y.shape:
            raise ValueError(f"y_hat must be a tensor of shape {tuple(y.shape)}")
        self.grads = bce_gradients(X, y_hat, y)
        return self.grads

    def optimize(self) -> None:
        """w ← w − lr·dw, b ← b − lr·db, in place (the parameters keep their storage)."""
        if not self.grads:
            raise RuntimeError("optimize() needs gradients: call backward() first")
        if self.w.is_inference() and not torch.is_inference_mode_enabled():
            # Made under inference_mode, updated outside it: move to ordinary tensors once.
            self.w, self.b = self.w.clone(), self.b.clone()
        self.w.sub_(self.grads["dw"], alpha=self.lr)
        self.b.sub_(self.grads["db"], alpha=self.lr)

    # --- the interface shared with the autograd twins ---------------------------------
    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Mean binary cross-entropy, computed stably from the logits."""
        X = self._X(X)
        return bce_from_logits(logits(X, self.w, self.b), self._y(y, X, check))

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """∂J/∂w and ∂J/∂b at the current parameters, without updating anything."""
        X = self._X(X)
        return bce_gradients(X, torch.sigmoid(logits(X, self.w, self.b)), self._y(y, X, check))

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """One full-batch GD step; returns the loss at the parameters before the step."""
        X = self._X(X)
        y = self._y(y, X, check)
        z = logits(X, self.w, self.b)
        loss = bce_from_logits(z, y)
        self.grads = bce_gradients(X, torch.sigmoid(z), y)
        self.optimize()
        return loss

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        """Copy ``w`` and ``b`` in (e.g. to evaluate two models at the same point)."""
        self.w = torch.as_tensor(w).to(self.device, self.dtype).reshape(self.n_features).clone()
        self.b = torch.as_tensor(b).to(self.device, self.dtype).reshape(()).clone()
