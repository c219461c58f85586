r"""Softmax (multinomial logistic) regression differentiated by hand: no autograd in this file.

The binary model's derivation, with C classes. X is (m, n), labels yᵢ ∈ {0, …, C − 1}, and Y
their one-hot rows (m, C):

    Z  = X W + b                                   logits, (m, C); W (n, C), b (C,)
    P  = softmax(Z),  P_ic = e^{Z_ic} / Σ_k e^{Z_ik}    probabilities, rows sum to 1
    J  = (1/m) Σᵢ −log P_{i,yᵢ} = (1/m) Σᵢ (log Σ_k e^{Z_ik} − Z_{i,yᵢ})

Derivation of the gradient, one line at a time:

    ∂Jᵢ/∂Z_ic = P_ic − [c = yᵢ] = (P − Y)_ic       (∂ log Σ_k e^{Z_ik} / ∂Z_ic = P_ic)
    ∂J/∂W     = (1/m) Σᵢ xᵢ (P − Y)ᵢ = Xᵀ(P − Y) / m  (∂Z_ic/∂W_jc = X_ij)
    ∂J/∂b     = (1/m) Σᵢ (P − Y)ᵢ     = mean(P − Y)   (∂Z_ic/∂b_c = 1)

With C = 2 and one column fixed at 0 this is the binary model: softmax([z, 0]) = (σ(z), 1 − σ(z)).
The update rules are the binary model's (``optimizers``); one learning rate per model here.
"""

from __future__ import annotations

import torch

from manual_models import _checks
from manual_models.logistic import logits
from manual_models.optimizers import HandStepped, Optimizer


def cross_entropy_from_logits(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """J = mean((M − Z_y) + log1p(Σ_{k ≠ argmax} e^{Z_k − M})), M = max_k Z_k: log Σ e^{Z} − Z_y.

    No exponent is positive, so nothing overflows, and for a confident right answer the
    bracket is exactly 0 and the small log1p term keeps its digits (``log_softmax`` computes
    log(1 + tiny) − 0 there, as ``BCEWithLogitsLoss`` does in the binary case).
    """
    top, at = Z.max(dim=1, keepdim=True)
    e = torch.exp(Z - top).scatter(1, at, 0.0)  # every term but the largest, which is e⁰ = 1
    per_sample = (top - Z.gather(1, y.unsqueeze(1))).squeeze(1) + torch.log1p(e.sum(1))
    return per_sample.mean()


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Y (m, C) in ``like``'s dtype; a scatter, so a GPU never checks y against C on the host."""
    return torch.zeros_like(like).scatter_(1, y.unsqueeze(1), 1.0)


def softmax_gradients(X: torch.Tensor, P: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """dW = Xᵀ(P − Y)/m, db = mean(P − Y): the chain rule through ∂J/∂Z = (P − Y)/m."""
    residual = P - one_hot(y, P)
    return {"dw": X.T @ residual / X.shape[0], "db": residual.mean(0)}


class SoftmaxRegression(HandStepped, _checks.CheckedModel):
    """Multinomial logistic regression, differentiated by hand, with the binary model's methods.

    ``W`` (also ``w``) is (n_features, n_classes) and ``b`` (n_classes,), drawn like
    ``nn.Linear(n_features, n_classes)`` from ``seed`` (its weight is Wᵀ), so the twins start
    from the same point. Labels are class indices (an integer tensor).
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        self._check_multiclass_args(n_features, n_classes, lr, device, dtype)
        self.w, self.b = self._initial_parameters(seed)
        self._init_rule(optimizer)  # optimize() and the kept gradients: HandStepped
        self.last_logits: torch.Tensor | None = None

    @property
    def W(self) -> torch.Tensor:
        return self.w

    # --- the post's three methods, for C classes ------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """P = softmax(X W + b), shape (n_samples, n_classes)."""
        return torch.softmax(logits(self._X(X), self.w, self.b), dim=1)

    def backward(
        self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """dW = Xᵀ(P − Y)/m, db = mean(P − Y); kept in ``self.grads`` (added to the kept ones
        when the rule has ``zero_grad=False``)."""
        X = self._X(X)
        y = self._y(y, X, check)
        expected = (X.shape[0], self.n_classes)
        if not isinstance(P, torch.Tensor) or P.shape != expected:
            raise ValueError(f"P must be a tensor of shape {expected}")
        return self._keep(softmax_gradients(X, P, y))

    # --- the shared interface ---------------------------------------------------------------
    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Mean cross-entropy, computed stably from the logits."""
        X = self._X(X)
        return cross_entropy_from_logits(logits(X, self.w, self.b), self._y(y, X, check))

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        X = self._X(X)
        P = torch.softmax(logits(X, self.w, self.b), dim=1)
        return softmax_gradients(X, P, self._y(y, X, check))

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """One full-batch step; returns the loss at the parameters before it."""
        X = self._X(X)
        y = self._y(y, X, check)
        Z = logits(X, self.w, self.b)
        loss = cross_entropy_from_logits(Z, y)
        self._keep(softmax_gradients(X, torch.softmax(Z, dim=1), y))
        self.last_logits = Z
        self.optimize()
        return loss

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        self.w = torch.as_tensor(w).to(self.device, self.dtype).reshape(self.w_shape).clone()
        self.b = torch.as_tensor(b).to(self.device, self.dtype).reshape(self.n_classes).clone()
