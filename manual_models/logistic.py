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

Several learning rates at once: give ``lr`` as a list of K rates and w becomes (n, K), b (K,),
one column per rate. The same formulas then read X once per step for all K models: X w is one
matrix product instead of K matrix-vector products, and Xᵀ(Ŷ − y) likewise. Every column is
exactly the model its own rate would train (the columns never mix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from manual_models import _checks
from manual_models.optimizers import HandStepped, Optimizer

# Rows of X above this many bytes are processed in blocks on the CPU (see _blocked_step).
BLOCK_BYTES = 32 << 20  # measured best of 2, 8 and 32 MiB on a 2-core Xeon (300 MiB L3)
BLOCKED_ABOVE = 128 << 20


def logits(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z = X w + b: (m,) for w (n,), or (m, K) for K columns of w (n, K) and b (K,)."""
    return X @ w + b


def column(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The labels (m,) shaped to broadcast against z: as they are, or (m, 1) for K columns."""
    return y if z.ndim == 1 else y.unsqueeze(1)


def bce_from_logits(z: torch.Tensor, y: torch.Tensor, *, reduce: str = "mean") -> torch.Tensor:
    """J = mean(softplus(z) − y z) = mean((max(z, 0) − y z) + log1p(e^{−|z|})).

    The exponent is never positive, so J is finite for every finite z: no log(0), no overflow.
    The bracket is exactly 0 for a confident right answer (y = 1, z > 0 or y = 0, z < 0), so the
    small log1p term is not rounded away: each sample's loss is accurate to a few ulp, even at
    1e-16 (``BCEWithLogitsLoss`` computes log(e^{−m} + e^{−z−m}) and loses digits there).
    Over the samples (dim 0): one loss, or one per column of z; ``reduce="sum"`` sums instead.
    """
    y = column(y, z)
    # addcmul(a, y, z, value=-1) is a − y·z, and softplus(−|z|) is log1p(e^{−|z|}) (its
    # threshold never applies to x ≤ 0): the same arithmetic in fewer kernels.
    per_sample = torch.addcmul(torch.clamp_min(z, 0), y, z, value=-1) + F.softplus(-z.abs())
    return per_sample.sum(0) if reduce == "sum" else per_sample.mean(0)


def bce_gradients(X: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y): the chain rule through ∂J/∂z = (ŷ − y)/m."""
    residual = y_hat - column(y, y_hat)
    return {"dw": X.T @ residual / X.shape[0], "db": residual.mean(0)}


def blocked_step(X, y, w, b, block_rows):
    """Loss, gradients and logits as above, in row blocks: X read from memory once a step.

    The unblocked step reads X twice (X w, then Xᵀ(ŷ − y)). Here each block of rows is used
    for both products while it is still in cache; the sums over blocks are the same sums
    added in another order, so the result equals the unblocked one to rounding.
    """
    m = X.shape[0]
    z = torch.empty((m, *w.shape[1:]), dtype=X.dtype, device=X.device)
    dw, total, residual_sum = torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(b)
    for start in range(0, m, block_rows):
        rows = slice(start, start + block_rows)
        Xb, yb, zb = X[rows], y[rows], z[rows]
        (torch.addmv if w.ndim == 1 else torch.addmm)(b, Xb, w, out=zb)  # z = b + X w
        total += bce_from_logits(zb, yb, reduce="sum")
        residual = torch.sigmoid(zb).sub_(column(yb, zb))
        (dw.addmv_ if w.ndim == 1 else dw.addmm_)(Xb.T, residual)  # dw += Xᵀ(ŷ − y)
        residual_sum += residual.sum(0)
    return total / m, {"dw": dw / m, "db": residual_sum / m}, z


class LogisticRegression(HandStepped, _checks.CheckedModel):
    """The post's logistic regression, differentiated by hand.

    ``forward`` → ``backward`` → ``optimize`` is the manual version of autograd's
    ``zero_grad → forward → loss → backward → step``. Nothing here requires grad, so it runs
    unchanged under ``torch.inference_mode()``.

    Parameters ``w`` (n_features,) and ``b`` (0-d) start from nn.Linear's default
    distribution drawn with ``seed``, so a twin built with the same seed starts identically.
    With ``lr`` a list of K rates they are (n_features, K) and (K,), every column starting
    from that same draw, and each method returns one value per column.
    """

    def __init__(
        self,
        n_features: int,
        lr: float | Sequence[float] = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        self._check_args(n_features, lr, device, dtype)
        self.w, self.b = self._initial_parameters(seed)
        if self.batch_shape:
            self._lr_row = torch.tensor(self.lrs, device=self.device, dtype=self.dtype)
        self._init_rule(optimizer)  # optimize() and the kept gradients: HandStepped
        self.last_logits: torch.Tensor | None = None

    # --- the post's three methods -------------------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """ŷ = σ(X w + b), shape (n_samples,), or (n_samples, K)."""
        return torch.sigmoid(logits(self._X(X), self.w, self.b))

    def backward(
        self, X: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y); kept in ``self.grads`` for :meth:`optimize`.

        With ``optimizer=Optimizer(zero_grad=False)`` they are added to the ones kept, as
        autograd adds into ``.grad`` when nothing zeroes it (the zero_grad ablation)."""
        X = self._X(X)
        y = self._y(y, X, check)
        expected = (*y.shape, *self.batch_shape)
        if not isinstance(y_hat, torch.Tensor) or y_hat.shape != expected:
            raise ValueError(f"y_hat must be a tensor of shape {expected}")
        return self._keep(bce_gradients(X, y_hat, y))

    def optimize(self) -> None:
        """w ← w − lr·dw, b ← b − lr·db, in place: plain SGD, the post's update (momentum,
        Nesterov, Adam and weight decay are the same call with another ``optimizer`` rule;
        they live in :mod:`manual_models.optimizers`)."""
        super().optimize()

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
        """One full-batch GD step; returns the loss at the parameters before the step.

        A large X on the CPU is processed in row blocks (:func:`blocked_step`), so it is read
        from memory once per step instead of twice; the arithmetic is the same.
        """
        X = self._X(X)
        y = self._y(y, X, check)
        if X.device.type == "cpu" and X.numel() * X.element_size() > BLOCKED_ABOVE:
            rows = max(1, BLOCK_BYTES // (X.shape[1] * X.element_size()))
            loss, grads, z = blocked_step(X, y, self.w, self.b, rows)
        else:
            z = logits(X, self.w, self.b)
            loss = bce_from_logits(z, y)
            grads = bce_gradients(X, torch.sigmoid(z), y)
        self._keep(grads)
        self.last_logits = z
        self.optimize()
        return loss

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        """Copy ``w`` and ``b`` in (e.g. to evaluate two models at the same point)."""
        shape = (self.n_features, *self.batch_shape)
        self.w = torch.as_tensor(w).to(self.device, self.dtype).reshape(shape).clone()
        self.b = torch.as_tensor(b).to(self.device, self.dtype).reshape(self.batch_shape).clone()
